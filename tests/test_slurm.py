"""`--cluster slurm` against a real SLURM (the `slurm` fixture: munged, slurmctld, slurmd on
localhost): the store equals a local run's, walltime retirements lose nothing, a cancelled
worker job's videos are rescheduled, and all jobs are gone at the end.

Audio-only extractors (logmel, mfcc): the point is scheduling. Long wavs hard-linked under
many names give tasks of a few seconds each without writing much to disk."""
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from featurize import datasets
from featurize.cluster import job_script, load_cluster_config
from featurize.demo import write_demo_corpus
from featurize.pipeline import run_features
from store.reader import manifest_rows
from clirun import emocache
from test_dask_cluster import assert_same_arrays

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "cluster-slurm.yaml"
AUDIO = ["logmel", "mfcc"]
pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _config(tmp_path, **over):
    return load_cluster_config(EXAMPLE, {"log_directory": str(tmp_path / "slurm-logs"), **over})


def _wav_corpus(folder: Path, n: int, seconds: int = 60) -> list[dict]:
    """`n` names for one `seconds`-long wav (5 min: ~2.6 s of logmel+mfcc on this machine)."""
    import soundfile as sf

    folder.mkdir(parents=True)
    sr = 16000
    t = np.arange(sr * seconds) / sr
    x = (0.3 * np.sin(2 * np.pi * (200 + 50 * np.sin(t / 7)) * t)).astype(np.float32)
    sf.write(folder / "a000.wav", x, sr, subtype="PCM_16")
    for i in range(1, n):
        os.link(folder / "a000.wav", folder / f"a{i:03d}.wav")
    return datasets.build("generic", folder)


class QueueWatch:
    """Polls squeue while a run goes on: every job of ours seen, and its states."""

    def __init__(self, slurm, every=0.5):
        self.slurm, self.every, self.seen = slurm, every, {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            for j in self.slurm.jobs():
                if j["name"].startswith("emocache-"):
                    self.seen.setdefault(j["id"], set()).add(j["state"])
            self._stop.wait(self.every)

    def running(self):
        return [j for j, states in self.seen.items() if "RUNNING" in states]

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)


def _ours_left(slurm):
    """Our jobs still pending or running (COMPLETING: cancelled, its processes being reaped)."""
    return [j for j in slurm.jobs() if j["name"].startswith("emocache-") and j["state"] != "COMPLETING"]


def _final_states(slurm, ids):
    return {j["id"]: j["state"] for j in slurm.all_jobs() if j["id"] in ids}


def _assert_one_line_each(store, keys, rows):
    for name, key in keys.items():
        ids = [m["video_id"] for m in manifest_rows(store, name, key)]
        assert sorted(ids) == sorted(r["video_id"] for r in rows), name   # each once: none lost, none redone


def test_example_config_loads():
    cfg = load_cluster_config(EXAMPLE)
    assert cfg.walltime == "00:30:00" and cfg.maximum_jobs == 2 and cfg.gpu is None
    assert EXAMPLE.read_text().rstrip() in (ROOT / "README.md").read_text()   # README shows this file


def test_bad_cluster_config_is_one_clear_error(tmp_path):
    from store.errors import InputError

    bad = tmp_path / "c.yaml"
    bad.write_text("slurm:\n  cores: 2\n  wallclock: 10\n")
    with pytest.raises(InputError) as e:
        load_cluster_config(bad)
    assert e.value.reason == "bad_config" and "wallclock" in str(e.value) and "walltime" in e.value.fix


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A 4-clip demo corpus and its local run: a LocalCluster, whose workers have the thread
    pins the SLURM jobs get (an in-process run with multi-threaded BLAS differs from both in
    the last float16 bit of mfcc)."""
    root = tmp_path_factory.mktemp("demo")
    write_demo_corpus(root / "corpus", n=4, seconds=2.0, seed=5)
    rows = datasets.build("demo", root / "corpus")
    ref = run_features(rows, root / "local", AUDIO, workers=1, progress=False)
    assert ref.failed_total == 0
    return root, rows, ref.keys


def test_slurm_store_equals_local_run(slurm, demo, tmp_path):
    root, rows, keys = demo
    with QueueWatch(slurm) as watch:
        s = run_features(rows, tmp_path / "slurm", AUDIO, cluster=_config(tmp_path), progress=False)
    assert s.failed_total == 0 and s.done == len(rows) * len(AUDIO)
    assert watch.running(), f"no job seen running in squeue: {watch.seen}"
    assert_same_arrays(root / "local", tmp_path / "slurm", keys, rows)
    assert _ours_left(slurm) == []          # every job cancelled at the end
    assert list((tmp_path / "slurm-logs").glob("emocache-*.err")), "no job logs in log_directory"


def test_job_script_has_the_local_worker_environment(tmp_path):
    """Thread pins exported, the nanny's pre-spawn environment replaced (no
    MALLOC_TRIM_THRESHOLD_), our lifetime before walltime (not Dask's --lifetime, which
    drops the running video), scheduler on 127.0.0.1."""
    text = job_script(_config(tmp_path, walltime="00:01:00"))
    assert "export OMP_NUM_THREADS=1" in text and "MALLOC_TRIM" not in text
    assert "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=" in text
    assert "EMOCACHE_LIFETIME=30 EMOCACHE_LIFETIME_STAGGER=7 EMOCACHE_WALLTIME=60" in text
    assert "EMOCACHE_JOB_START=" in text and "--lifetime" not in text
    assert "#SBATCH -t 00:01:00" in text and "--host 127.0.0.1" in text


def test_lifetime_that_does_not_fit_the_walltime_is_one_clear_error(tmp_path, capsys):
    from featurize.cluster import margin_warning
    from store.errors import InputError

    with pytest.raises(InputError) as e:
        job_script(_config(tmp_path, walltime="00:01:00", lifetime="00:55", lifetime_stagger="00:10"))
    assert e.value.reason == "bad_config" and "walltime" in e.value.fix
    assert "23 s between retiring" in margin_warning(_config(tmp_path, walltime="00:01:00"), "00:01:00")
    assert margin_warning(_config(tmp_path), "00:30:00") is None      # 6 min before a 30 min walltime


def test_job_array_script(slurm, demo, tmp_path):
    """`emocache slurm-script --shards 2` -> sbatch --array=0-1; both tasks write their shard
    into one store, which then equals the local run's."""
    root, rows, keys = demo
    script, store = tmp_path / "array.sh", tmp_path / "store"
    emocache("slurm-script", "--shards", "2", "--out", script, "--cluster-config", EXAMPLE,
             "--input", root / "corpus", "--store", store, "--extractors", ",".join(AUDIO), cwd=tmp_path)
    text = script.read_text()
    assert "#SBATCH --array=0-1" in text and '--shard "$SLURM_ARRAY_TASK_ID/2"' in text
    sub = slurm.run("sbatch", "--wait", "--parsable", str(script), timeout=300)
    job = sub.stdout.strip().split(";")[0]
    logs = sorted((tmp_path / "slurm-logs").glob(f"emocache-array-{job}_*.out"))
    assert sub.returncode == 0, (sub.stderr, [p.read_text()[-500:] for p in logs])
    assert len(logs) == 2                                   # two array tasks ran
    states = {j["id"]: j["state"] for j in slurm.all_jobs() if j["id"].startswith(f"{job}_")}
    assert sorted(states) == [f"{job}_0", f"{job}_1"] and set(states.values()) == {"COMPLETED"}, states
    assert_same_arrays(root / "local", store, keys, rows)
