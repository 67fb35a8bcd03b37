"""Faults as a lab meets them: `emocache features` SIGKILLed mid-write, run twice (and four
times) at once on one store, a `dask worker` killed mid-run, a full disk, a damaged store.

Every test ends the same way: each video in each key's manifest exactly once, `verify`
clean, and every array equal to the one a single clean run wrote.

`make soak` runs the kill loop longer: EMOCACHE_KILLS=20 (CI: 3, one per write state).
"""
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clirun import emocache, emocache_popen
from store.reader import ERRORS, MANIFEST, read_jsonl, read_video
from store.verify import verify

pytestmark = pytest.mark.slow
DASK = Path(sys.executable).parent / "dask"
AUDIO = "logmel,mfcc"


def run(*args, ok=True):
    p = emocache(*args, ok=ok, timeout=900)
    return p.returncode, p.stdout, p.stderr


def features(corpus, store, extractors=AUDIO, *extra):
    return ("features", "--input", corpus, "--dataset", "demo", "--store", store,
            "--extractors", extractors, "--quiet", *extra)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "corpus"
    run("demo-data", "--out", out, "--n", 6, "--seconds", 4)
    return out


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    store = tmp_path_factory.mktemp("ref") / "store"
    run(*features(corpus, store, AUDIO, "--scheduler", "inline"))
    return store


def temps(store) -> list[Path]:
    return list(Path(store).glob("features/*/*/.tmp-*"))


def key_dirs(store) -> dict[str, Path]:
    return {p.parent.name: p for p in Path(store).glob("features/*/*") if p.is_dir()}


def assert_same_as(reference, store, n_videos) -> tuple[int, int]:
    """Each video once per manifest, verify clean, no error lines, arrays equal: (arrays, differing)."""
    ref_keys, keys = key_dirs(reference), key_dirs(store)
    assert set(keys) >= set(ref_keys)
    n_arrays = n_diff = 0
    for name, rdir in ref_keys.items():
        kdir = keys[name]
        assert kdir.name == rdir.name
        ids = [r["video_id"] for r in read_jsonl(kdir / MANIFEST)]
        assert sorted(ids) == sorted(set(ids)) and len(ids) == n_videos, (name, ids)
        assert read_jsonl(kdir / ERRORS) == [], (name, read_jsonl(kdir / ERRORS))
        for vid in ids:
            a, attrs_a = read_video(reference, name, rdir.name, vid)
            b, attrs_b = read_video(store, name, kdir.name, vid)
            assert set(a) == set(b) and attrs_a == attrs_b
            for k in a:
                n_arrays += 1
                n_diff += not (a[k].shape == b[k].shape and np.array_equal(a[k], b[k]))
    problems = [p for p in verify(store) if not p.startswith("warning:")]
    assert problems == [], problems
    assert not temps(store)
    assert not list(Path(store).glob("features/*/*/.claim-*"))
    print(f"compared {n_arrays} arrays with a clean run's: {n_diff} differ")
    assert n_diff == 0
    return n_arrays, n_diff


# --- SIGKILL of the whole process group, timed to land during writes ----------------------

def _unannounced(store) -> set[str]:
    """Video folders renamed into place whose manifest line is not written yet."""
    out = set()
    for kdir in key_dirs(store).values():
        lines = {r["video_id"] for r in read_jsonl(kdir / MANIFEST)} if (kdir / MANIFEST).exists() else set()
        out |= {f"{kdir.name}/{d.name}" for d in kdir.iterdir()
                if d.is_dir() and not d.name.startswith(".") and d.name not in lines}
    return out


# What each kill waits for, in order (then "random" for EMOCACHE_KILLS beyond these three).
KILL_AT = ("chunks", "renamed", "random")


def test_sigkill_during_writes_loses_nothing(corpus, reference, tmp_path):
    """Kills land in the three states a write passes through, one kill each, then a clean run
    on the same store must equal a clean run's store:
    - chunks: a temp folder being filled (no zarr.json in it yet),
    - renamed: a video folder renamed into place, its manifest line not yet appended,
    - random: 0-8 ms after the nth (1-3) temp folder appeared (renames, manifest appends...).

    Once its first temp folder is on disk, the run is stopped (SIGSTOP) for each look at the
    store and killed while stopped, so the state it dies in is the state the test saw (the
    first write lasts 0.4-0.9 s: zarr's import, so the unstopped polling before it sees it). Why targeted kills, not more random ones: a
    write lasts 30-120 ms now (logmel and mfcc of a 4 s clip), and 5 random kills on 6 runs
    cost 149 s in the full suite (each run ~8-25 s of start-up at load 4-12) yet could all
    miss the rename-to-manifest window; 3 targeted kills cover each state in 4 runs.
    `make soak` (EMOCACHE_KILLS=20) adds random kills."""
    want = max(len(KILL_AT), int(os.environ.get("EMOCACHE_KILLS", str(len(KILL_AT)))))
    plan = list(KILL_AT) + ["random"] * (want - len(KILL_AT))
    rng = random.Random(int(os.environ.get("EMOCACHE_KILL_SEED", "7")))
    kills, landed, rounds, hit = 0, 0, 0, []
    while kills < want:
        store = tmp_path / f"store{rounds}"
        rounds += 1
        while True:
            target = plan[kills] if kills < want else None
            before = {t.name for t in temps(store)}  # a killed run's leftovers are not new writes
            stale = _unannounced(store)
            p = emocache_popen(*features(corpus, store, AUDIO, "--scheduler", "inline"), start_new_session=True)
            deadline = time.monotonic() + 300
            nth = rng.randint(1, 3)
            seen: set = set()
            state = None
            while target and p.poll() is None and time.monotonic() < deadline:
                if not seen and not {t.name for t in temps(store)} - before:
                    time.sleep(0.002)   # start-up runs free: stepped, it took 1.5x as long
                    continue
                os.killpg(p.pid, signal.SIGSTOP)
                new = {t.name: t for t in temps(store) if t.name not in before}
                seen |= set(new)
                if target == "chunks" and len(seen) >= nth and any(not (t / "zarr.json").exists() for t in new.values()):
                    state = "chunks"
                elif target == "renamed" and _unannounced(store) - stale:
                    state = "renamed"
                elif target == "random" and len(seen) >= nth or len(seen) >= 8:  # 8: past the target
                    os.killpg(p.pid, signal.SIGCONT)
                    time.sleep(rng.uniform(0, 0.008))
                    os.killpg(p.pid, signal.SIGSTOP)
                    state = "random"
                if state:
                    break
                os.killpg(p.pid, signal.SIGCONT)
                time.sleep(0.001)
            if state is None:
                out, err = p.communicate()
                assert p.returncode == 0, err
                break  # this store is complete
            landed += bool({t.name for t in temps(store)} - before)
            hit.append(state if state == target else f"{target}->{state}")
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            kills += 1
        assert_same_as(reference, store, 6)
    print(f"{kills} SIGKILLs ({', '.join(hit)}) in {rounds} store(s), {landed} with a new temp folder on disk")
    assert hit[0] == "chunks" and landed >= 1


# --- concurrent runs on one store ---------------------------------------------------------

@pytest.mark.parametrize("n,extra", [(2, ("--workers", "1")), (4, ("--scheduler", "inline"))],
                         ids=["2-local-clusters", "4-inline"])
def test_concurrent_runs_write_each_video_once(corpus, reference, tmp_path, n, extra):
    store = tmp_path / "store"
    procs = [emocache_popen(*features(corpus, store, AUDIO, *extra)) for _ in range(n)]
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, (out, err)
    assert_same_as(reference, store, 6)


def test_concurrent_runs_with_faces(tmp_path):
    corpus = tmp_path / "corpus"
    run("demo-data", "--out", corpus, "--n", 3, "--seconds", 1.5)
    ref, store = tmp_path / "ref", tmp_path / "store"
    run(*features(corpus, ref, "faces,logmel", "--scheduler", "inline"))
    procs = [emocache_popen(*features(corpus, store, "faces,logmel", "--scheduler", "inline")) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, (out, err)
    assert_same_as(ref, store, 3)


# --- a killed dask worker -----------------------------------------------------------------

def test_killed_dask_worker_mid_run(corpus, reference, tmp_path):
    sched_file = tmp_path / "scheduler.json"
    logs = open(tmp_path / "dask.log", "w")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(sched_file)], env=env, stdout=logs, stderr=subprocess.STDOUT,
            start_new_session=True))
        for i in range(2):
            procs.append(subprocess.Popen(
                [str(DASK), "worker", "--scheduler-file", str(sched_file), "--nthreads", "1",
                 "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}",
                 "--local-directory", str(tmp_path / f"w{i}")], env=env, stdout=logs,
                stderr=subprocess.STDOUT, start_new_session=True))
        from tests.test_dask_cluster import _wait_for_workers

        address = _wait_for_workers(sched_file, 2, procs)
        store = tmp_path / "store"
        p = emocache_popen(*features(corpus, store, AUDIO, "--scheduler", address))
        deadline = time.monotonic() + 300
        # kill once some videos are finished (their results sit on the workers) and one is being written
        while time.monotonic() < deadline and p.poll() is None:
            done = sum(len(read_jsonl(k / MANIFEST)) for k in key_dirs(store).values())
            if done >= 4 and temps(store):
                break
            time.sleep(0.005)
        assert p.poll() is None, "the run ended before a worker could be killed"
        os.killpg(procs[1].pid, signal.SIGKILL)
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, (out, err)
        # a video the killed worker finished but never reported is "already done" for its retry
        counts = re.search(r"done (\d+); skipped (\d+) \(already done (\d+)", out)
        assert counts and int(counts[1]) + int(counts[3]) == 12 and "failed 0" in out, out
        assert_same_as(reference, store, 6)
    finally:
        for q in reversed(procs):
            if q.poll() is None:
                os.killpg(q.pid, signal.SIGTERM)
        for q in procs:
            try:
                q.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(q.pid, signal.SIGKILL)
        logs.close()


# --- a full disk --------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (needs root and mount rights: skipped with the reason otherwise)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full-disk test needs root to mount a small tmpfs")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> Path:
    filler = mnt / "filler"
    st = os.statvfs(mnt)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_full_disk_is_one_line_leaves_no_temp_and_resumes(corpus, reference, small_disk):
    store = small_disk / "store"
    filler = _fill(small_disk, 0)
    rc, out, err = run(*features(corpus, store, AUDIO, "--scheduler", "inline"), ok=False)
    assert rc == 2 and "[disk_full]" in err and len(err.strip().splitlines()) == 1, (rc, out, err)
    leftovers = [p for p in small_disk.rglob("*") if p.is_file() and p != filler]
    assert leftovers == [], leftovers  # no 0-byte temp manifest
    filler.unlink()
    filler = _fill(small_disk, 150_000)  # room for the manifest and a few videos, not all
    rc, out, err = run(*features(corpus, store, AUDIO, "--scheduler", "inline"), ok=False)
    assert rc == 2 and "disk_full" in out, (rc, out, err)
    assert not temps(store)
    assert [p for p in verify(store) if not p.startswith("warning:")] == []
    filler.unlink()
    for kdir in key_dirs(store).values():  # the failures are recorded where there was room
        (kdir / ERRORS).unlink(missing_ok=True)
    run(*features(corpus, store, AUDIO, "--scheduler", "inline"))
    assert_same_as(reference, store, 6)


# --- damage: train refuses, repair retires, features redoes exactly those ----------------

def test_damaged_store_is_refused_repaired_and_redone(tmp_path):
    corpus, store = tmp_path / "corpus", tmp_path / "store"
    run("demo-data", "--out", corpus, "--n", 4, "--seconds", 2)
    run(*features(corpus, store, "faces,mesh,fer,logmel,mfcc", "--scheduler", "inline"))
    mfcc = key_dirs(store)["mfcc"]
    victim = mfcc / "demo_02" / "data" / "c.0.0"
    victim.unlink()
    rc, out, err = run("train", "--exp", "demo", "--store", store, "--runs", tmp_path / "runs", ok=False)
    last = err.strip().splitlines()[-1]  # above it, at most the loading progress bar
    assert rc == 2 and "[damaged]" in last and "demo_02" in last and "--repair" in last, (rc, out, err)
    assert "Traceback" not in err
    rc, out, _ = run("verify", "--store", store, "--repair")
    assert "demo_02: retired" in out and "0 problem(s)" in out
    rc, out, _ = run(*features(corpus, store, "faces,mesh,fer,logmel,mfcc", "--scheduler", "inline"))
    assert "done 1;" in out, out  # exactly the damaged one
    assert [p for p in verify(store) if not p.startswith("warning:")] == []
    assert victim.is_file()
