"""A real one-node SLURM for the tests: munged, slurmctld and slurmd on this machine.

Debian's `slurm-wlm` (22.05) and `munge` are installed with apt-get when missing (root
only). Everything the daemons write (config, key, sockets, state, logs) lives in one
temporary folder, on ports picked free at start, so the suite never touches /etc/slurm and
two suites on one machine do not meet. Measured here (2 cores): daemons up and the node
idle in 1.7 s; the apt-get install on a fresh machine was not timed.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmUnavailable(RuntimeError):
    """Why this machine cannot run the test SLURM (the tests skip with this text)."""


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _binaries() -> dict:
    found = {}
    for name in (*DAEMONS, "sbatch", "squeue", "scancel", "sinfo", "scontrol"):
        path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}")
                                           if os.path.exists(p)), None)
        if path:
            found[name] = path
    return found


def ensure_installed() -> dict:
    """Paths of the SLURM and munge binaries, installing the Debian packages if needed."""
    found = _binaries()
    if len(found) == len(DAEMONS) + 5:
        return found
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurm-wlm/munge not installed and not root (cannot apt-get install them)")
    if not shutil.which("apt-get"):
        raise SlurmUnavailable("slurm-wlm/munge not installed and no apt-get on this machine")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed: {(r.stderr or r.stdout).strip()[-300:]}")
    found = _binaries()
    missing = sorted({*DAEMONS, "sbatch", "squeue", "scancel", "sinfo", "scontrol"} - set(found))
    if missing:
        raise SlurmUnavailable(f"after apt-get install {' '.join(PACKAGES)}: {missing} still missing")
    return found


def machine() -> tuple[int, int]:
    """(CPUs, MiB) to declare: the real CPU count (slurmd drains a node that claims more) and
    RealMemory 5% under the memory `free -m` reports (slurmd drains a node whose RealMemory
    exceeds what it finds)."""
    cpus = os.cpu_count() or 1
    with open("/proc/meminfo") as f:
        total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return cpus, int(total_kib / 1024 * 0.95)


class LocalSlurm:
    """Start with .start(), stop with .stop(); `env` is what a client (sbatch, squeue, the
    dask-jobqueue cluster) needs: SLURM_CONF pointing at this instance's slurm.conf."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.bins = ensure_installed()
        self.procs: dict[str, subprocess.Popen] = {}
        self.cpus, self.memory_mb = machine()
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ setup
    def _write_config(self) -> None:
        r = self.root
        for d in ("munge", "state", "spool", "log", "run"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        ctld_port, d_port = _free_ports(2)
        host = socket.gethostname().split(".")[0]
        self.conf.write_text("\n".join([
            "ClusterName=emocache-test",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge' / 'munge.socket'}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",   # no cgroups in containers and CI machines
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "MpiDefault=none",
            "ReturnToService=2",
            "MailProg=/bin/true",
            "InactiveLimit=0",
            "KillWait=5",                           # SIGTERM at walltime, SIGKILL 5 s later
            "OverTimeLimit=0",
            "MinJobAge=600",                         # finished jobs stay in `scontrol show job` for the tests
            "SchedulerParameters=sched_interval=2",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName=localhost NodeAddr=127.0.0.1 NodeHostname={host} CPUs={self.cpus} "
            f"RealMemory={self.memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stderr", "wb")
        self.procs[name] = subprocess.Popen([self.bins[name], *args], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> "LocalSlurm":
        self._write_config()
        m = self.root / "munge"
        self._spawn("munged", ["--foreground", "--force", f"--socket={m / 'munge.socket'}",
                               f"--key-file={m / 'munge.key'}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={self.root / 'log' / 'munged.log'}",
                               f"--seed-file={m / 'munged.seed'}"])
        self._wait(lambda: (m / "munge.socket").exists(), 10, "munged did not create its socket")
        self._spawn("slurmctld", ["-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self._run("sinfo", "-h").returncode == 0, timeout, "slurmctld did not answer")
        self._spawn("slurmd", ["-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait(lambda: self.node_state() in ("idle", "mixed", "allocated"), timeout,
                   "the node did not become idle")
        return self

    def _wait(self, ok, timeout, what) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SlurmUnavailable(f"{what}: {name} exited ({p.returncode}); {self.log_tail()}")
            if ok():
                return
            time.sleep(0.3)
        raise SlurmUnavailable(f"{what} within {timeout:.0f} s; {self.log_tail()}")

    def log_tail(self, n: int = 400) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            text = f.read_text(errors="replace").strip()
            if text:
                out.append(f"{f.name}: ...{text[-n:]}")
        return " | ".join(out)

    # ------------------------------------------------------------------ use
    def _run(self, tool: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([self.bins[tool], *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def node_state(self) -> str:
        r = self._run("sinfo", "-h", "-N", "-o", "%T")
        return r.stdout.strip().rstrip("*~#").lower() if r.returncode == 0 else ""

    def jobs(self) -> list[dict]:
        """Jobs in the queue now: [{id, name, state}]."""
        r = self._run("squeue", "-h", "-o", "%i|%j|%T")
        return [dict(zip(("id", "name", "state"), line.split("|"))) for line in r.stdout.split()]

    def all_jobs(self) -> list[dict]:
        """Every job slurmctld still remembers (MinJobAge: 10 min after it ended): [{id, name, state}]."""
        r = self._run("scontrol", "show", "job", "-o")
        out = []
        for line in r.stdout.splitlines():
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "JobId" in f:   # an array task is ARRAYJOB_TASK, as squeue names it
                jid = (f"{f['ArrayJobId']}_{f['ArrayTaskId']}" if f.get("ArrayTaskId") else f["JobId"])
                out.append({"id": jid, "name": f.get("JobName", ""), "state": f.get("JobState", "")})
        return out

    def run(self, tool: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self._run(tool, *args, timeout=timeout)

    # ------------------------------------------------------------------ teardown
    def stop(self) -> None:
        if "squeue" in self.bins and self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self._run("scancel", "--full", "-u", str(os.getuid()))
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
