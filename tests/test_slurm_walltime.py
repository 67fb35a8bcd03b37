"""Walltime without loss, against the real test SLURM: 1-minute jobs on a corpus that needs
about 3 minutes of worker time. Workers retire before the walltime (featurize/lifetime.py),
each finishing the video it runs, and `adapt` replaces their jobs: the run completes, no
video is lost, none already in the store is touched, none is started twice."""
import pytest

from featurize.pipeline import run_features
from store.reader import manifest_rows, read_video
from test_slurm import AUDIO, QueueWatch, _assert_one_line_each, _config, _final_states, _ours_left, _wav_corpus

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# names of one 4-min wav (hard links); FIRST done beforehand. MOST 600, not 90: on CI's idle
# machine (2026-12-03) 86 videos took 19.8 s on 2 jobs, inside one 20 s lifetime, so none
# retired; _plan grows the corpus to what 3 generations of jobs need, up to MOST
SECONDS, FIRST, MOST = 240, 4, 600
PER_JOB = 15                         # videos a job should do in its lifetime, if it can
JOBS, GENERATIONS = 2, 3
# a 1-minute walltime: retire at most 40 s ± 2 s after the job's start, leaving >= 18 s for
# the last video and the exit (the default, 30 s ± 7 s, left 23 s; at load 15 a job's
# start-up alone is ~50 s); at least 20 s, shorter on an idle machine (see _plan)
LIFE, SHORTEST, STAGGER = 40, 20, 2


# what a fresh job's worker does before its first video is under way: start Python, import
# distributed's worker and our modules, the audio features' first call
_STARTUP = """
import distributed.cli.dask_worker, featurize.lifetime, featurize.pipeline
import numpy as np
from featurize.audio import mel_power
mel_power(np.zeros(16000, np.float32), 16000, 400, 160, 400, 64, 0.0, 8000.0)
"""


def _startup_seconds() -> float:
    import subprocess
    import sys
    import time

    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", _STARTUP], check=True, capture_output=True, timeout=300)
    return time.monotonic() - t0 + 3.0      # + sbatch to job start on the test SLURM (sched_interval=2)


def _plan(store, keys) -> tuple[int, int]:
    """(videos, lifetime s) for the SLURM run, so that each of JOBS jobs has to be replaced
    GENERATIONS - 1 times at this machine's speed now: a job does the videos that fit in
    lifetime - stagger after its start-up, at least one. A video's time is its manifest
    'seconds' in the local run beforehand; start-up is measured now (18 s at load average 6,
    ~50 s at 15: then 1 video a job, 6 in all). On an idle machine the lifetime shrinks
    (down to SHORTEST) and the corpus grows (up to MOST)."""
    video = max(max(sorted(m["seconds"] for m in manifest_rows(store, n, k))[FIRST // 2], 0.1)
                for n, k in keys.items())
    # x1.5: a job's real start-up (2 at once, plus registering and the first task) ran
    # longer: at load 13, 5.5 videos a job were done where 11 were planned
    startup = 1.5 * _startup_seconds()
    life = int(min(LIFE, max(SHORTEST, startup + STAGGER + PER_JOB * video)))
    per_job = max(1, int((life - STAGGER - startup) // video))
    return min(MOST - FIRST, JOBS * GENERATIONS * per_job), life


def _arrays(store, keys, vid):
    return {name: read_video(store, name, key, vid)[0] for name, key in keys.items()}


def _assert_same(a, b, what):
    import numpy as np

    assert a.keys() == b.keys(), what
    for name in a:
        assert a[name].keys() == b[name].keys(), (what, name)
        for k in a[name]:
            np.testing.assert_array_equal(a[name][k], b[name][k], err_msg=f"{what} {name}/{k}")


def test_one_minute_walltime_loses_and_redoes_nothing(slurm, tmp_path):
    rows = _wav_corpus(tmp_path / "wavs", MOST, seconds=SECONDS)
    store = tmp_path / "store"
    # the first videos in the store beforehand, from a local run: the reference arrays
    # (every name is the same wav) and the ones the SLURM run must not touch
    ref = run_features(rows[:FIRST], store, AUDIO, workers=1, progress=False)
    assert ref.failed_total == 0 and ref.done == FIRST * len(AUDIO)
    keys = ref.keys
    before = {name: {m["video_id"]: m for m in manifest_rows(store, name, key)} for name, key in keys.items()}
    mtimes = {p: p.stat().st_mtime_ns for p in store.joinpath("features").rglob("*") if p.is_file()
              and any(f"/{v}/" in str(p) for v in before["logmel"])}
    reference = _arrays(store, keys, rows[0]["video_id"])
    n, life = _plan(store, keys)
    rows = rows[:FIRST + n]
    N = len(rows)

    cfg = _config(tmp_path, walltime="00:01:00", lifetime=f"00:{life:02d}", lifetime_stagger=f"00:0{STAGGER}",
                  maximum_jobs=JOBS)
    with QueueWatch(slurm) as watch:
        s = run_features(rows, store, AUDIO, cluster=cfg, progress=False)
    jobs = set(watch.seen)
    states = _final_states(slurm, jobs)
    info = f"{s}\njobs {len(jobs)}: {states}"
    assert s.failed_total == 0, info
    assert s.skipped == FIRST * len(AUDIO) and s.done == (N - FIRST) * len(AUDIO), info
    # longer than one walltime: jobs retired and were replaced, none reached SLURM's kill
    # (not every job retires: the adaptive cluster scancels jobs still pending or starting when
    # it scales down, 4 of 15 on CI's idle machine once workers started faster; SLURM's kill
    # shows as TIMEOUT, asserted below)
    assert len(jobs) > cfg.maximum_jobs and s.retired > cfg.maximum_jobs, info
    assert s.lost == 0 and s.restarted == [], info       # no worker killed in use, no video started twice
    assert not set(states.values()) & {"FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT"}, info
    _assert_one_line_each(store, keys, rows)             # each video committed exactly once
    for name, key in keys.items():                       # the earlier ones untouched
        after = {m["video_id"]: m for m in manifest_rows(store, name, key)}
        assert all(after[v] == m for v, m in before[name].items()), name
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    for r in rows[FIRST:]:                               # nothing lost: equal to the local run
        _assert_same(_arrays(store, keys, r["video_id"]), reference, r["video_id"])
    assert _ours_left(slurm) == []
    print(f"walltime 1 min, lifetime {life} s: {N - FIRST} videos, {len(jobs)} jobs, {s.retired} retirements, "
          f"{s.seconds:.0f} s; job states {sorted(states.values())}")
