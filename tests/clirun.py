"""The `emocache` console script run as a user runs it, in its own process: the one runner
the CLI tests share (the installed script when the venv has it, else `python -m
experiments.cli`; OMP_NUM_THREADS=1 so parallel tests do not oversubscribe 2 cores)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

EMOCACHE = Path(sys.executable).parent / "emocache"


def command() -> list[str]:
    return [str(EMOCACHE)] if EMOCACHE.exists() else [sys.executable, "-m", "experiments.cli"]


def _env(env: dict | None) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def emocache_popen(*args, env: dict | None = None, **popen) -> subprocess.Popen:
    """Started, not waited for (to kill it, interrupt it, or run several at once); stdout/stderr
    piped. SIGINT is back to its default in the child, as in a terminal: a suite started in the
    background (`cmd &` in a script, which CI runners and nohup'd jobs do) ignores SIGINT and its
    children inherit that, so a Ctrl-C test's SIGINT did nothing and the run finished (exit 0):
    the "silent exit 0" seen only in full suites on 2026-12-02 (Python keeps an inherited
    SIG_IGN instead of installing KeyboardInterrupt)."""
    return subprocess.Popen(command() + [str(a) for a in args], env=_env(env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **popen)


def emocache(*args, ok: bool = True, timeout: float = 600, env: dict | None = None,
             **run) -> subprocess.CompletedProcess:
    """Run to the end; ``ok``: a non-zero exit fails the test with both streams."""
    t0 = time.monotonic()
    p = subprocess.run(command() + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout, env=_env(env), **run)
    print(f"\nemocache {args[0] if args else ''}: {time.monotonic() - t0:.1f} s")
    if ok and p.returncode != 0:
        raise AssertionError(f"emocache {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def fresh_python(code: str, timeout: float = 120) -> str:
    """`code` in a fresh interpreter (for what happens at import time); its stdout, stripped.
    A non-zero exit fails the test with its stderr."""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                       env=_env(None))
    if p.returncode != 0:
        raise AssertionError(f"python -c exited {p.returncode}\n{p.stderr[-3000:]}")
    return p.stdout.strip()
