"""Faults against the real test SLURM: a worker job scancel'd mid-run (its videos are
rescheduled, every video ends in the store exactly once); Ctrl-C of `emocache features
--cluster slurm` (exit 130, one line, every job gone, a re-run finishes only the rest)."""
import os
import signal
import threading
import time

import pytest
from clirun import emocache, emocache_popen

from test_slurm import (AUDIO, EXAMPLE, QueueWatch, _assert_one_line_each, _config, _final_states, _ours_left,
                        _wav_corpus)
from featurize.pipeline import run_features
from store.reader import manifest_rows

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_scancel_of_a_running_worker_job(slurm, tmp_path):
    """24 one-minute wavs on up to 2 jobs; once 3 videos are done, one running job is
    scancel'd: the run ends with no failure, the cancelled job CANCELLED, all 24 in the store."""
    rows = _wav_corpus(tmp_path / "wavs", 24, seconds=60)
    cfg = _config(tmp_path, maximum_jobs=2)
    store = tmp_path / "store"
    cancelled = []

    def cancel_one(watch):
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = list((store / "features").glob("logmel/*/manifest.jsonl"))
            running = watch.running()
            if running and done and done[0].read_text().count("\n") >= 3:
                slurm.run("scancel", running[0])
                cancelled.append(running[0])
                return
            time.sleep(0.3)

    with QueueWatch(slurm) as watch:
        t = threading.Thread(target=cancel_one, args=(watch,), daemon=True)
        t.start()
        s = run_features(rows, store, AUDIO, cluster=cfg, progress=False)
        t.join(5)
    assert cancelled, "no running job to cancel was seen"
    assert _final_states(slurm, set(cancelled))[cancelled[0]] == "CANCELLED"
    assert s.failed_total == 0, str(s)
    assert s.lost >= 1 and set(s.restarted) <= {r["video_id"] for r in rows}, str(s)  # the summary says so
    _assert_one_line_each(store, s.keys, rows)
    assert _ours_left(slurm) == []


def _lines(store, extractor="logmel"):
    return [m for p in sorted((store / "features").glob(f"{extractor}/*/manifest.jsonl"))
            for m in manifest_rows(store, extractor, p.parent.name)]


def test_ctrl_c_of_the_cli_cancels_every_job_and_a_rerun_finishes_the_rest(slurm, tmp_path):
    """SIGINT to the process group (what a terminal's Ctrl-C sends) once a job runs and
    2 videos are done: exit 130, the CLI's one-line message and no traceback, none of the
    run's jobs pending or running 5 s later (and none completing 20 s later, KillWait=5);
    the same command again exits 0, skips what was done and commits each of the rest once."""
    # 3-minute files (~1.5 s each): since the per-file cost fell (store writes, one container
    # open) 30 one-minute files could all finish before the interrupt landed (exit 0 at load 5)
    # 60, not 30: after the start-up and STFT cuts of 2026-12-02 all 30 finished before it once more
    # 9-minute files, not 3 (hard links of one wav: no disk cost): each takes ~4 s, so the run
    # outlasts this loop's squeue polls by minutes.
    rows = _wav_corpus(tmp_path / "wavs", 60, seconds=540)
    store = tmp_path / "store"
    args = ["features", "--input", tmp_path / "wavs", "--store", store, "--extractors", ",".join(AUDIO),
            "--cluster", "slurm", "--cluster-config", EXAMPLE, "--quiet"]
    p = emocache_popen(*args, cwd=tmp_path, start_new_session=True)
    ours = f"emocache-{p.pid}-"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and p.poll() is None:
            running = [j for j in slurm.jobs() if j["name"].startswith(ours) and j["state"] == "RUNNING"]
            if running and len(_lines(store)) >= 2:
                break
            time.sleep(0.3)
        assert p.poll() is None, p.communicate()
        assert running, "no job of the run seen running"
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    t_end = time.monotonic()
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert err.strip().splitlines()[-1] == ("emocache features: interrupted; finished videos are kept, "
                                            "re-run to resume"), err[-2000:]
    assert err.count("interrupted") == 1 and "Traceback" not in err, err[-2000:]
    def left(states=("PENDING", "RUNNING", "COMPLETING")):
        return [j for j in slurm.jobs() if j["name"].startswith(ours) and j["state"] in states]

    while left(("PENDING", "RUNNING")) and time.monotonic() < t_end + 5:
        time.sleep(0.3)
    assert left(("PENDING", "RUNNING")) == [], left()
    while left() and time.monotonic() < t_end + 20:        # KillWait=5: SIGKILL 5 s after SIGTERM
        time.sleep(0.3)
    assert left() == [], left()                            # its processes gone: no more writes
    kept = {n: {m["video_id"]: m for m in _lines(store, n)} for n in AUDIO}
    assert len(kept["logmel"]) >= 2

    again = emocache(*args, cwd=tmp_path)
    assert f"already done {sum(map(len, kept.values()))}," in again.stdout, again.stdout
    for n in AUDIO:                                              # finished videos not redone
        after = {m["video_id"]: m for m in _lines(store, n)}
        assert all(after[v] == m for v, m in kept[n].items()), n
    _assert_one_line_each(store, {n: p.parent.name for n in AUDIO
                                  for p in (store / "features").glob(f"{n}/*/manifest.jsonl")}, rows)
