"""scancel against the real test SLURM: a worker job cancelled mid-run; its videos are
rescheduled and every video ends in the store exactly once."""
import threading
import time

import pytest

from test_slurm import AUDIO, QueueWatch, _assert_one_line_each, _config, _final_states, _ours_left, _wav_corpus
from featurize.pipeline import run_features

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
    _assert_one_line_each(store, s.keys, rows)
    assert _ours_left(slurm) == []


