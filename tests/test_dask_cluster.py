"""A real Dask cluster: `dask scheduler` + two `dask worker` processes on 127.0.0.1; the
arrays it writes equal those of an in-process run, and a LocalCluster run agrees too."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from featurize import datasets
from featurize.demo import write_demo_corpus
from featurize.pipeline import run_features
from store.reader import manifest_rows, read_video

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent
EXTRACTORS = ["faces", "fer", "logmel"]


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    write_demo_corpus(out, n=2, seconds=1.6, seed=11)
    return datasets.build("demo", out)


@pytest.fixture(scope="module")
def reference(rows, tmp_path_factory, fer_weights):
    store = tmp_path_factory.mktemp("inline")
    s = run_features(rows, store, EXTRACTORS, scheduler="inline", progress=False)
    assert s.failed_total == 0
    return store, s.keys


def assert_same_arrays(store_a, store_b, keys, rows):
    for name, key in keys.items():
        assert len(manifest_rows(store_b, name, key)) == len(rows)
        for r in rows:
            a, attrs_a = read_video(store_a, name, key, r["video_id"])
            b, attrs_b = read_video(store_b, name, key, r["video_id"])
            assert set(a) == set(b)
            for k in a:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}/{r['video_id']}/{k}")
            assert attrs_a == attrs_b


def stop_processes(procs) -> None:
    """Terminate `dask` processes (workers first), killing any that outlive 20 s."""
    for p in reversed(procs):
        p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait_for_workers(sched_file: Path, n: int, procs, timeout=120):
    from distributed import Client

    deadline = time.monotonic() + timeout
    while not sched_file.is_file():
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("the scheduler did not start")
        time.sleep(0.2)
    with Client(scheduler_file=str(sched_file), timeout=30) as c:
        c.wait_for_workers(n, timeout=timeout)
    return json.loads(sched_file.read_text())["address"]


def test_external_cluster_equals_inline(rows, reference, tmp_path):
    sched_file = tmp_path / "scheduler.json"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(tmp_path / "numba")))
    logs = open(tmp_path / "dask.log", "w")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(sched_file)], env=env, stdout=logs, stderr=subprocess.STDOUT))
        for i in range(2):
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                 "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}",
                 "--local-directory", str(tmp_path / f"w{i}")], env=env, stdout=logs, stderr=subprocess.STDOUT))
        address = _wait_for_workers(sched_file, 2, procs)
        assert address.startswith("tcp://127.0.0.1:")
        store = tmp_path / "store"
        s = run_features(rows, store, EXTRACTORS, scheduler=address, progress=False)
        assert (s.done, s.failed_total) == (len(rows) * len(EXTRACTORS), 0)
        ref_store, keys = reference
        assert s.keys == keys
        assert_same_arrays(ref_store, store, keys, rows)
        # both workers are still there at the end: none died or was restarted during the run
        from distributed import Client
        with Client(address) as c:
            assert len(c.scheduler_info()["workers"]) == 2
    finally:
        stop_processes(procs)
        logs.close()


def test_local_cluster_equals_inline(rows, reference, tmp_path):
    store = tmp_path / "store"
    s = run_features(rows, store, EXTRACTORS, workers=2, progress=False)
    assert (s.done, s.failed_total) == (len(rows) * len(EXTRACTORS), 0)
    assert_same_arrays(reference[0], store, reference[1], rows)


def _worker_env():
    import os

    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


@pytest.mark.cluster
def test_local_workers_keep_glibc_adaptive_malloc():
    """Dask's default MALLOC_TRIM_THRESHOLD_ made fer 2.5-3x slower per frame in workers."""
    from featurize.pipeline import dask_client

    client, cluster = dask_client(1, None)
    try:
        env = client.submit(_worker_env).result()
    finally:
        client.close()
        cluster.close()
    assert env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}


def _tone_wavs(folder: Path, n: int, seconds: float = 1.0) -> list[Path]:
    """n short 16 kHz mono wavs (different tones), as a speech corpus's clips are."""
    import wave

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        t = np.arange(int(16000 * seconds)) / 16000
        pcm = (0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t) * 32767).astype("<i2")
        p = folder / f"clip{i:02d}.wav"
        with wave.open(str(p), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(pcm.tobytes())
        paths.append(p)
    return paths


def test_short_audio_files_share_tasks_and_one_bad_file_fails_alone(tmp_path):
    from featurize.pipeline import batch_tasks, plan_extractors, prepare_rows

    _tone_wavs(tmp_path / "in", 9)
    (tmp_path / "in" / "clip04b.wav").write_bytes(b"RIFF\0\0\0\0WAVEjunk" * 64)   # not decodable
    rows = datasets.build("generic", tmp_path / "in")
    specs = plan_extractors(["logmel", "mfcc"])
    tasks = [(r, specs, ["logmel", "mfcc"], None) for r in prepare_rows(rows)[0]]
    batches = batch_tasks(tasks, workers=1)
    assert [t for b in batches for t in b] == tasks and max(len(b) for b in batches) == 2
    bad_batch = next(b for b in batches if any(t[0]["video_id"] == "clip04b" for t in b))
    assert len(bad_batch) == 2           # it shares its task with a good file

    inline = run_features(rows, tmp_path / "inline", ["logmel", "mfcc"], scheduler="inline", progress=False)
    s = run_features(rows, tmp_path / "dask", ["logmel", "mfcc"], workers=1, progress=False)
    assert (s.done, s.failed_total, s.failed_ids) == (18, 2, {"clip04b"})
    assert (inline.done, inline.failed) == (s.done, s.failed)
    good = [r for r in rows if r["video_id"] != "clip04b"]
    assert_same_arrays(tmp_path / "inline", tmp_path / "dask", s.keys, good)


def test_video_and_gpu_tasks_stay_one_per_task():
    from featurize.pipeline import Spec, batch_tasks

    audio = Spec("mfcc", None, "audio", "k", {})
    frames = Spec("faces", None, "frames", "k", {})
    tasks = ([({"video_id": f"a{i}"}, [audio], ["mfcc"], None) for i in range(40)]
             + [({"video_id": f"v{i}"}, [frames, audio], ["faces", "mfcc"], None) for i in range(3)]
             + [({"video_id": "g"}, [audio], ["mfcc"], {"GPU": 1})])
    batches = batch_tasks(tasks, workers=2)
    assert [t for b in batches for t in b] == tasks
    assert [len(b) for b in batches] == [5] * 8 + [1] * 4       # 40 // (4 tasks x 2 workers) = 5 a batch
    assert [len(b) for b in batch_tasks(tasks[:7], workers=2)] == [1] * 7   # too few to share
