"""Dask workers as SLURM jobs (dask-jobqueue), from one YAML block.

`emocache features --cluster slurm --cluster-config FILE.yaml` runs the same pipeline as a
local run; only where the workers live changes. The block (under a top-level `slurm:` key;
docs/cluster-slurm.yaml is the documented example the tests load):

    cores, processes, memory, walltime, queue, account   -> one CPU job = `processes` workers
    job_extra_directives, job_script_prologue            -> extra #SBATCH lines, `module load ...`
    local_directory, log_directory, python, interface    -> worker scratch, job logs, scheduler NIC
    minimum_jobs, maximum_jobs                           -> adapt(): jobs follow the videos left
    lifetime, lifetime_stagger                           -> retire before walltime (see below)
    gpu: {queue, gres, cores, memory, walltime, maximum_jobs, job_extra_directives}

Walltime. SLURM kills a job at its walltime; to Dask that is a worker lost mid-task, and
tasks that were on a worker that died count towards `KilledWorker`. So workers retire on
their own first (featurize/lifetime.py, a worker plugin; not Dask's `--lifetime`, which
drops the running video): `lifetime` (default walltime minus 20%, at most 10 min, at
least 30 s) after their job started, ± `lifetime_stagger`, a worker stops taking videos,
finishes the one it runs, retires and exits; its job ends and `adapt` submits a new one
while videos are left. walltime - lifetime - stagger is the time a last video has: under
30 s the run warns (margin_warning), a video seen taking longer is a warning in the
summary. Dask's SpecCluster keeps a retired job's name in its plan, so `adapt` would see
"enough workers" and never replace it; the cluster here forgets a job once its worker has
left. Jobs run their worker without a nanny (`--no-nanny`): the job is the unit SLURM
restarts, and one interpreter fewer to start in every job (its imports are most of a
1-minute job's start-up under load).

GPU workers apart. With `gpu:` configured, GPU jobs run their workers with
`--resources GPU=1` and only `backbone` tasks ask for that resource (featurize/pipeline.py),
so CPU jobs never build the model, never import CUDA; workers use the spawn start method.

Worker environment is the local workers' one: WORKER_ENV thread pins exported in the job
script, Dask's nanny told not to export MALLOC_TRIM_THRESHOLD_ (see pipeline.dask_client).
The scheduler listens on 127.0.0.1 unless `interface` names the NIC that compute nodes
reach (e.g. ib0): a single-node or login-node test needs nothing.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from store.errors import InputError

__all__ = ["SlurmConfig", "GpuConfig", "load_cluster_config", "parse_walltime", "slurm_cluster",
           "worker_env_exports", "lifetime_env",
           "lifetime_seconds", "margin_warning", "slurm_client", "cancel_jobs", "job_script", "array_script"]


def parse_walltime(text) -> int:
    """SLURM time formats -> seconds: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (an int is minutes)."""
    if isinstance(text, (int, float)):
        return int(text * 60)
    s = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise ValueError(f"walltime {text!r}: expected e.g. 01:00:00, 30, 1-12:00:00")
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H[:M[:S]]
        h, mi, se = (parts + [0, 0])[:3]
        return int(days) * 86400 + h * 3600 + mi * 60 + se
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def _default_lifetime(walltime_s: int) -> tuple[int, int]:
    """(lifetime, stagger) seconds: retire a margin before walltime (20%, at most 10 min,
    at least 30 s: the lifetime runs from the worker's start, which on the loaded test node
    came 10-15 s after the job's); stagger a quarter of the margin so jobs started together
    do not all retire in the same second."""
    margin = max(30, min(600, int(walltime_s * 0.2)))
    lifetime = max(5, walltime_s - margin)
    return lifetime, max(1, margin // 4)


@dataclass(frozen=True)
class GpuConfig:
    queue: str | None = None
    gres: str = "gpu:1"
    cores: int = 4
    memory: str = "16GB"
    walltime: str | None = None        # default: the CPU jobs' walltime
    maximum_jobs: int = 1
    job_extra_directives: tuple = ()


@dataclass(frozen=True)
class SlurmConfig:
    cores: int = 1
    processes: int = 1                 # Dask workers per job, each with cores/processes threads
    memory: str = "4GB"
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    job_extra_directives: tuple = ()
    job_script_prologue: tuple = ()
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None
    interface: str | None = None
    minimum_jobs: int = 0
    maximum_jobs: int = 4
    lifetime: str | None = None        # SLURM time format; default from walltime (_default_lifetime)
    lifetime_stagger: str | None = None
    death_timeout: int = 120
    gpu: GpuConfig | None = None
    source: str = field(default="", compare=False)


def _tuple(v, what, path):
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise InputError(path, "bad_config", f"{what} must be a list of strings, got {v!r}",
                         f"e.g. {what}: [\"--qos=normal\"]")
    return tuple(v)


def _build(cls, block: dict, path, where: str):
    names = {f.name for f in dataclasses.fields(cls)} - {"source"}
    unknown = sorted(set(block) - names)
    if unknown:
        raise InputError(path, "bad_config", f"unknown key(s) in {where}: {', '.join(unknown)}",
                         f"known: {', '.join(sorted(names))}")
    kw = dict(block)
    for k in ("job_extra_directives", "job_script_prologue"):
        if k in kw:
            kw[k] = _tuple(kw[k], f"{where}.{k}", path)
    for k in ("cores", "processes", "minimum_jobs", "maximum_jobs", "death_timeout"):
        if k in kw and not (isinstance(kw[k], int) and kw[k] >= 0):
            raise InputError(path, "bad_config", f"{where}.{k} must be a whole number >= 0, got {kw[k]!r}",
                             f"e.g. {k}: 4")
    for k in ("walltime", "lifetime", "lifetime_stagger"):
        if kw.get(k) is not None:
            try:
                parse_walltime(kw[k])
            except ValueError as e:
                raise InputError(path, "bad_config", f"{where}.{k}: {e}", "SLURM format, e.g. 01:00:00") from None
            kw[k] = str(kw[k])
    return cls(**kw)


def load_cluster_config(path=None, overrides: dict | None = None) -> SlurmConfig:
    """The `slurm:` block of a YAML file (or the whole file when it has no such key); no file
    -> the defaults (one 1-core job per worker, 1 h walltime)."""
    import yaml

    block: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(p, "missing_file", "cluster config not found",
                             "give a YAML file with a `slurm:` block (see docs/cluster-slurm.yaml)")
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(p, "bad_config", f"not valid YAML: {e}".splitlines()[0], "fix the YAML syntax") from None
        if not isinstance(doc, dict):
            raise InputError(p, "bad_config", "expected a mapping with a `slurm:` block", "see the README's cluster example")
        block = doc.get("slurm", doc)
        if not isinstance(block, dict):
            raise InputError(p, "bad_config", "`slurm:` must be a mapping", "see the README's cluster example")
    block = {**block, **(overrides or {})}
    gpu = block.pop("gpu", None)
    cfg = _build(SlurmConfig, block, path or "<cluster defaults>", "slurm")
    if gpu is not None:
        if not isinstance(gpu, dict):
            raise InputError(path, "bad_config", "slurm.gpu must be a mapping", "e.g. gpu: {queue: gpu, gres: 'gpu:1'}")
        cfg = dataclasses.replace(cfg, gpu=_build(GpuConfig, gpu, path, "slurm.gpu"))
    return dataclasses.replace(cfg, source=str(path or ""))


def worker_env_exports(extra: dict | None = None) -> list[str]:
    """Job-script lines that give a SLURM worker the local workers' environment: the thread
    pins, and Dask's nanny config replaced so it does not export MALLOC_TRIM_THRESHOLD_
    (dask_client's comment has the measurement), workers started with spawn, and the slower
    event-loop housekeeping of LOOP_CONFIG."""
    from featurize.pipeline import LOOP_CONFIG, WORKER_ENV

    env = dict(WORKER_ENV)
    if os.environ.get("NUMBA_CACHE_DIR"):
        env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
    for k in ("EMOCACHE_MODELS", "PYTHONPATH"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    env.update(extra or {})
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append("export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="
                 + shlex.quote(repr(dict(WORKER_ENV))))
    lines.append("export DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD=spawn")
    lines += [f"export DASK_{k.upper().replace('.', '__').replace('-', '_')}={shlex.quote(v)}"
              for k, v in LOOP_CONFIG.items()]
    return lines


MIN_MARGIN_S = 30


def lifetime_seconds(cfg: SlurmConfig, walltime: str) -> tuple[int, int, int]:
    """(lifetime, stagger, walltime) seconds for jobs of `walltime`: cfg.lifetime and
    cfg.lifetime_stagger (SLURM time format) override the defaults. A config whose
    lifetime + stagger reaches the walltime is an error: SLURM would kill every worker
    before it retires."""
    wall = parse_walltime(walltime)
    life, stagger = _default_lifetime(wall)
    if cfg.lifetime is not None:
        life = parse_walltime(cfg.lifetime)
    if cfg.lifetime_stagger is not None:
        stagger = parse_walltime(cfg.lifetime_stagger)
    if life + stagger >= wall or life - stagger <= 0:
        raise InputError(cfg.source or "<cluster config>", "bad_config",
                         f"lifetime {life} s ± stagger {stagger} s does not fit walltime {walltime} ({wall} s)",
                         "make lifetime + lifetime_stagger shorter than walltime (default: 20% before it)")
    return life, stagger, wall


def margin_warning(cfg: SlurmConfig, walltime: str) -> str | None:
    """A one-line warning when jobs of `walltime` leave a worker's last video less than
    MIN_MARGIN_S between its retirement and SLURM's kill (None when they do not)."""
    life, stagger, wall = lifetime_seconds(cfg, walltime)
    margin = wall - life - stagger
    if margin >= MIN_MARGIN_S:
        return None
    return (f"warning: walltime {walltime} leaves a worker {margin} s between retiring (lifetime {life} s "
            f"± {stagger} s after its job starts) and SLURM's kill: a video that takes longer is killed "
            f"mid-way and redone; raise walltime or lower lifetime in {cfg.source or 'the cluster config'}")


def lifetime_env(cfg: SlurmConfig, walltime: str) -> list[str]:
    """Job-script lines for featurize/lifetime.py: the job's start (SLURM's own when it
    sets one) and the lifetime, stagger and walltime in seconds. Not Dask's `--lifetime`:
    that drops the video a retiring worker is running (featurize/lifetime.py says why)."""
    life, stagger, wall = lifetime_seconds(cfg, walltime)
    return ["export EMOCACHE_JOB_START=${SLURM_JOB_START_TIME:-$(date +%s)}",
            f"export EMOCACHE_LIFETIME={life} EMOCACHE_LIFETIME_STAGGER={stagger} EMOCACHE_WALLTIME={wall}"]


def _job_kwargs(cfg: SlurmConfig, *, queue, cores, memory, walltime, processes, directives,
                resources: dict | None, log_directory, job_name) -> dict:
    extra_args = []
    if resources:
        extra_args += ["--resources", ",".join(f"{k}={v}" for k, v in resources.items())]
    if cfg.interface is None:
        extra_args += ["--host", "127.0.0.1"]
    return dict(cores=cores, processes=processes, memory=memory, walltime=walltime, queue=queue,
                account=cfg.account, job_extra_directives=list(directives),
                job_script_prologue=(worker_env_exports() + lifetime_env(cfg, walltime)
                                     + list(cfg.job_script_prologue)),
                local_directory=cfg.local_directory, log_directory=log_directory,
                python=cfg.python, worker_extra_args=extra_args, death_timeout=cfg.death_timeout,
                job_name=job_name, nanny=False)


def _cpu_job_kwargs(cfg: SlurmConfig, job_name: str) -> dict:
    log_dir = cfg.log_directory or os.path.join(os.getcwd(), "slurm-logs")
    return _job_kwargs(cfg, queue=cfg.queue, cores=cfg.cores, memory=cfg.memory,
                       walltime=cfg.walltime, processes=cfg.processes,
                       directives=cfg.job_extra_directives, resources=None, log_directory=log_dir,
                       job_name=job_name)


def job_script(cfg: SlurmConfig, scheduler: str = "tcp://127.0.0.1:8786") -> str:
    """The sbatch script one CPU worker job would get (for checking a config by eye)."""
    return _job_class()(scheduler, name="worker", **_cpu_job_kwargs(cfg, "emocache")).job_script()


def slurm_cluster(cfg: SlurmConfig, n_videos: int, need_gpu: bool = False):
    """A started dask_jobqueue.SLURMCluster, adapting between cfg.minimum_jobs and as many
    jobs as the videos can keep busy (at most cfg.maximum_jobs); GPU jobs (cfg.gpu) join
    when `need_gpu` and there are GPU tasks waiting. Close it to cancel every job."""
    SLURMJob = _job_class()

    job_name = f"emocache-{os.getpid()}-{secrets.token_hex(3)}"   # this run's jobs, for the last scancel
    cpu = _cpu_job_kwargs(cfg, job_name)
    sched = {"dashboard_address": "127.0.0.1:0"}
    if cfg.interface is None:
        sched["host"] = "127.0.0.1"
    gpu_spec = None
    if need_gpu and cfg.gpu is not None:
        g = cfg.gpu
        gdir = list(g.job_extra_directives) + ([f"--gres={g.gres}"] if g.gres else [])
        gkw = _job_kwargs(cfg, queue=g.queue, cores=g.cores, memory=g.memory,
                          walltime=g.walltime or cfg.walltime, processes=1, directives=gdir,
                          resources={"GPU": 1}, log_directory=cpu["log_directory"], job_name=job_name)
        gpu_spec = {"cls": SLURMJob, "options": gkw}

    import sys

    for walltime in dict.fromkeys([cfg.walltime] + ([gpu_spec["options"]["walltime"]] if gpu_spec else [])):
        warning = margin_warning(cfg, walltime)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    cluster = _cluster_class()(interface=cfg.interface, scheduler_options=sched, **cpu)
    cluster._job_name = job_name
    cluster._gpu_spec = gpu_spec
    cluster._gpu_max = cfg.gpu.maximum_jobs if gpu_spec else 0
    jobs = max(1, math.ceil(n_videos / max(1, cfg.processes)))
    maximum = max(cfg.minimum_jobs, min(cfg.maximum_jobs, jobs)) + cluster._gpu_max
    cluster.adapt(minimum_jobs=cfg.minimum_jobs, maximum_jobs=maximum, wait_count=3, interval="1s")
    return cluster


def slurm_client(cluster):
    """A Client of `cluster` with featurize/lifetime.py's plugin on every worker (those that
    join later too): retirement before walltime, and the events `lifetime.report` counts."""
    from distributed import Client

    from featurize.lifetime import GracefulLifetime

    client = Client(cluster)
    client.register_plugin(GracefulLifetime())
    return client


def array_script(cfg: SlurmConfig, shards: int, features_args: list[str], log_directory=None) -> str:
    """An sbatch script for sites without long-lived schedulers: `--array=0-(shards-1)`, each
    task runs `emocache features ... --shard $SLURM_ARRAY_TASK_ID/shards` on its own cores
    (a LocalCluster of --cpus-per-task workers) into the same store. Shards are disjoint
    (video ids sorted, index % n); a requeued or replayed task finds its done videos in the
    store and skips them; two tasks on one video (a replay while the first still runs) is
    what the store's one-writer-per-video claim (issue 7) is for. Resources, partition, account, extra directives and prologue from `cfg`."""
    import sys

    from dask.utils import parse_bytes

    slurm_format_bytes_ceil = _jobqueue().slurm_format_bytes_ceil

    if shards < 1:
        raise ValueError(f"shards={shards}: need >= 1")
    logs = Path(log_directory or cfg.log_directory or os.path.join(os.getcwd(), "slurm-logs")).resolve()
    head = ["#!/usr/bin/env bash", "#SBATCH -J emocache-array", f"#SBATCH --array=0-{shards - 1}",
            "#SBATCH -n 1", f"#SBATCH --cpus-per-task={cfg.cores}",
            f"#SBATCH --mem={slurm_format_bytes_ceil(parse_bytes(cfg.memory))}", f"#SBATCH -t {cfg.walltime}",
            f"#SBATCH -o {logs}/emocache-array-%A_%a.out", f"#SBATCH -e {logs}/emocache-array-%A_%a.err"]
    if cfg.queue:
        head.append(f"#SBATCH -p {cfg.queue}")
    if cfg.account:
        head.append(f"#SBATCH -A {cfg.account}")
    head += [f"#SBATCH {d}" for d in cfg.job_extra_directives]
    python = cfg.python or sys.executable
    cmd = [shlex.quote(python), "-m", "experiments.cli", "features", *map(shlex.quote, features_args),
           "--shard", f'"$SLURM_ARRAY_TASK_ID/{shards}"', "--workers", '"${SLURM_CPUS_PER_TASK:-1}"', "--quiet"]
    body = ["set -euo pipefail", f"mkdir -p {shlex.quote(str(logs))}", *cfg.job_script_prologue,
            *worker_env_exports(), f"cd {shlex.quote(os.getcwd())}", "exec " + " ".join(cmd)]
    return "\n".join(head + [""] + body) + "\n"


def cancel_jobs(job_name: str | None) -> None:
    """`scancel --name` of one run's jobs (no error when none are left or SLURM is gone)."""
    import shutil
    import subprocess

    if job_name and shutil.which("scancel"):
        subprocess.run(["scancel", f"--name={job_name}"], capture_output=True, timeout=60)


def _jobqueue():
    """dask_jobqueue.slurm, imported without its side effect: dask_jobqueue.runner (imported
    by the package) sets SIGINT to `sys.exit()` for the whole process, so Ctrl-C of
    `emocache features --cluster slurm` exited 0 mid-run instead of raising
    KeyboardInterrupt (exit 130, jobs cancelled). The handler found before is put back."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        import dask_jobqueue.slurm as slurm
    finally:
        if main and before is not None and signal.getsignal(signal.SIGINT) is not before:
            signal.signal(signal.SIGINT, before)
    return slurm


@functools.lru_cache(maxsize=1)
def _job_class():
    class Job(_jobqueue().SLURMJob):
        """The worker `exec`s in the job script: it is the job's own process, so scancel's
        and the walltime's SIGKILL reach it. Run as bash's child, a worker whose close hung
        (after its scheduler was gone) outlived its cancelled job on the test SLURM
        (proctrack/linuxproc follows parent pids; the orphan's parent was init) and still
        committed a video after `squeue` showed no job."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._command_template = "exec " + self._command_template

    return Job


@functools.lru_cache(maxsize=1)
def _cluster_class():
    SLURMCluster = _jobqueue().SLURMCluster

    class Cluster(SLURMCluster):
        """SLURMCluster that (1) forgets a job once its workers left the scheduler, so adapt
        replaces jobs retired at --lifetime or cancelled (Dask keeps their names in the plan
        and would count them as running), and (2) adds GPU jobs first while fewer than
        `_gpu_max` are planned."""
        job_cls = _job_class()
        _gpu_spec = None
        _gpu_max = 0
        _job_name = None

        async def _close(self):
            """Cancel every job of this run, also ones dask-jobqueue no longer tracks (pending,
            forgotten after retiring): on success, failure and Ctrl-C alike."""
            try:
                await super()._close()
            finally:
                cancel_jobs(self._job_name)

        def _update_worker_status(self, op, msg):
            if op == "remove":
                info = self.scheduler_info.get("workers", {}).get(msg)
                name = info.get("name") if info else None
                super()._update_worker_status(op, msg)
                job = self._job_of(name)
                if job is not None and job in self.worker_spec:
                    alive = {str(w.get("name")) for w in self.scheduler_info.get("workers", {}).values()}
                    members = self._members(job)
                    if not members & alive:
                        del self.worker_spec[job]
                return
            super()._update_worker_status(op, msg)

        def _members(self, job) -> set:
            spec = self.worker_spec.get(job, {})
            return {f"{job}{s}" for s in spec["group"]} if "group" in spec else {str(job)}

        def _job_of(self, worker_name):
            if worker_name is None:
                return None
            for job in self.worker_spec:
                if str(worker_name) in self._members(job):
                    return job
            return None

        def new_worker_spec(self):
            if self._gpu_spec is not None:
                planned = sum(1 for n in self.worker_spec if str(n).startswith("gpu-"))
                if planned < self._gpu_max:
                    i = 0
                    while f"gpu-{i}" in self.worker_spec or f"gpu-{i}" in self.workers:
                        i += 1
                    return {f"gpu-{i}": self._gpu_spec}
            return super().new_worker_spec()

    return Cluster

