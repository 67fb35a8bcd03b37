"""SLURM workers retire before their job's walltime without dropping the video they run.

Why not Dask's own `--lifetime`: at its lifetime a worker calls `close_gracefully`, i.e.
`Scheduler.retire_workers`, which waits until the worker's *finished* results are copied
elsewhere (the Active Memory Manager's RetireWorker policy looks only at data in memory),
not for the task it is *executing*: the worker is removed, its video in flight goes back
to the queue and is done again from the start on another worker. On the one-node test
SLURM with a 1-minute walltime that redid a video at almost every retirement, and under
load (start-up plus one video longer than the lifetime) it livelocked: no video was ever
finished. Dask's lifetime also counts from the worker's start, not the job's, so a slow
start-up eats the margin before SLURM's kill.

Here (`GracefulLifetime`, a worker plugin the driver registers on SLURM clusters):

- at `EMOCACHE_LIFETIME` seconds after the *job* started (± `EMOCACHE_LIFETIME_STAGGER`,
  both exported by the job script, see featurize/cluster.py) the worker stops taking
  tasks: status `closing_gracefully`, so the scheduler sends it none and starts none of
  those queued on it; a worker that has not finished a video by then first finishes one,
  so a slow start-up cannot make every job end with nothing done (the livelock);
- it finishes the video it is running, waits until the driver has fetched the result,
  then retires as `close_gracefully` does (an expected removal: the videos queued on it,
  never started, go elsewhere and count as no failure) and exits; its job ends and
  `adapt` submits a new one;
- every task start, every retirement and every video (but a worker's first, which pays
  its imports) that took longer than the job's margin (walltime - lifetime - stagger: the
  time a last video has before SLURM kills it) is a Dask event under TOPIC; `report`
  turns them into the counts the run prints.

Seen on the one-node test SLURM, 1-minute walltime, lifetime 40 s ± 2 s, 2 jobs at a time
(tests/test_slurm_walltime.py): at load average 6-12, 18 videos in 82 s over 4 jobs, 3
retirements, no worker lost, no video started twice; at 13-16 with lifetime 30 s ± 7 s
(a job's start-up ~50 s: the first-video rule carried each job) 6 videos over 4 jobs, 3
retirements, likewise none lost or restarted.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter

from distributed import WorkerPlugin
from distributed.core import Status

TOPIC = "emocache-lifetime"
POLL_S = 0.2


class GracefulLifetime(WorkerPlugin):
    """No-op on a worker whose environment has no EMOCACHE_LIFETIME (not one of our jobs)."""

    name = "emocache-lifetime"
    idempotent = True

    async def setup(self, worker):
        env = os.environ
        self.worker = worker
        self.done = 0
        self.started: dict = {}
        self.retiring = False
        self.task = None
        self.margin = None
        self.setup_at = time.time()
        if not env.get("EMOCACHE_LIFETIME"):
            return
        self.job_start = float(env.get("EMOCACHE_JOB_START") or time.time())
        stagger = float(env.get("EMOCACHE_LIFETIME_STAGGER") or 0)
        life = float(env["EMOCACHE_LIFETIME"])
        walltime = float(env.get("EMOCACHE_WALLTIME") or 0)
        self.retire_at = self.job_start + life + random.uniform(-stagger, stagger)
        self.kill_at = self.job_start + walltime if walltime else None
        if walltime:
            self.margin = walltime - life - stagger
        self.task = asyncio.ensure_future(self._retire_when_due())

    async def teardown(self, worker):
        if self.task is not None and not self.retiring and not self.task.done():
            self.task.cancel()

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing":
            self.started[key] = time.monotonic()
            self._event({"op": "start", "key": str(key)})
        elif start == "executing":
            t0 = self.started.pop(key, None)
            first = self.done == 0          # pays the worker's imports: not what a last video takes
            if finish == "memory":
                self.done += 1
            if (t0 is not None and not first and self.margin is not None
                    and time.monotonic() - t0 > self.margin):
                self._event({"op": "slow", "key": str(key), "seconds": round(time.monotonic() - t0, 1),
                             "margin": round(self.margin, 1)})

    def _event(self, msg: dict) -> None:
        try:
            self.worker.log_event(TOPIC, {**msg, "worker": str(self.worker.name)})
        except Exception:  # noqa: BLE001  (a closing worker cannot send; the count is only a report)
            pass

    def _busy(self) -> bool:
        st = self.worker.state
        return bool(st.executing or st.long_running)

    async def _retire_when_due(self):
        w = self.worker
        await asyncio.sleep(max(0.0, self.retire_at - time.time()))
        # no video finished yet (slow start-up): finish the first one, unless that would
        # start videos when less than half the margin is left before SLURM's kill
        hard_stop = self.kill_at - self.margin / 2 if self.kill_at and self.margin else self.retire_at
        while (self.done == 0 and time.time() < hard_stop
               and (self._busy() or w.state.ready or time.time() < self.setup_at + 5)):
            await asyncio.sleep(POLL_S)
        if w.status not in (Status.running, Status.paused):
            return                                  # closing already (driver ended the run)
        self.retiring = True
        w.status = Status.closing_gracefully        # tells the scheduler; queued tasks stay unstarted
        stopped = time.time()
        data_by = (self.kill_at - 5) if self.kill_at else stopped + 60
        while self._busy() or (w.data and time.time() < data_by):
            await asyncio.sleep(POLL_S)             # the running video ends; the driver takes its result
        self._event({"op": "retire", "done": self.done, "after_s": round(time.time() - self.job_start, 1),
                     "waited_s": round(time.time() - stopped, 1), "executing": len(w.state.executing)})
        try:
            await w.scheduler.retire_workers(workers=[w.address], close_workers=False, remove=True,
                                             stimulus_id=f"emocache-lifetime-{time.time()}")
            await asyncio.sleep(0.5)    # the scheduler's status echo, before we are `closing` (else an ERROR line)
        finally:
            await w.close(nanny=True, reason="emocache-lifetime")


def report(client, keys: dict) -> dict:
    """From the run's events: {"retired": workers retired at their lifetime, "lost": workers
    that left unannounced (killed: walltime, scancel, node failure), "restarted": video ids
    whose task started more than once, "slow": [(video_id, seconds, margin)]}.
    `keys`: task key -> video id."""
    try:
        events = [msg for _t, msg in client.get_events(TOPIC)]
        removed = [msg for _t, msg in client.get_events("all")
                   if isinstance(msg, dict) and msg.get("action") == "remove-worker"]
    except Exception:  # noqa: BLE001  (scheduler gone: nothing to report)
        return {"retired": 0, "lost": 0, "restarted": [], "slow": []}
    starts = Counter(m["key"] for m in events if m.get("op") == "start" and m.get("key") in keys)
    return {"retired": sum(1 for m in events if m.get("op") == "retire"),
            "lost": sum(1 for m in removed if not m.get("expected")),
            "restarted": sorted({keys[k] for k, n in starts.items() if n > 1}),
            "slow": [(keys.get(m["key"], m["key"]), m["seconds"], m["margin"])
                     for m in events if m.get("op") == "slow"]}
