"""What every benchmark result carries, and the one place that writes results files.

Why: the machines these run on are shared and noisy, so a figure is only worth its ratio to
another figure measured in the same run -- and only when the file says what else was
running (load average before and after), which code (git sha), which libraries and which
thread settings produced it.

    results = Results("bench")          # header: machine, cores, GPU, versions, sha, threads, load
    results["features"] = {...}         # one section per benchmark
    results.write()                     # benchmarks/results/<date>-<sha>.json + .md (table)
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def fs_journal(path) -> dict:
    """The file system under `path`: type, device, mount point, and for ext4 whether it has a
    journal (a jbd2 entry in /proc/fs/jbd2). Why: a journal-less ext4 skips inodes freed in the
    last minutes at each create (see bench_clips.fs_probe), so file creation there costs what
    the machine deleted lately, not what the code does."""
    target = str(Path(path).resolve())
    best = None
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            mount = left.split()[4]
            fstype, source = right.split()[:2]
            if (target == mount or target.startswith(mount.rstrip("/") + "/")) and \
                    (best is None or len(mount) > len(best[0])):
                best = (mount, fstype, source)
    except (OSError, IndexError, ValueError):
        return {}
    if best is None:
        return {}
    mount, fstype, source = best
    out = {"type": fstype, "source": source, "mount": mount}
    if fstype == "ext4":
        dev = Path(source).name
        jbd2 = Path("/proc/fs/jbd2")
        out["journal"] = jbd2.is_dir() and any(e.name.startswith(dev + "-") for e in jbd2.iterdir())
    return out


def header() -> dict:
    """Machine, cores, GPU, library versions, git sha, thread settings, load average now."""
    from experiments import runinfo

    info = runinfo.collect()
    m = info["machine"]
    m["cpu"] = cpu_model()
    m["nice"] = os.nice(0)
    m["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import torch

        m["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or None
    except ImportError:
        m["gpu"] = None
    threads = {k: os.environ.get(k) for k in THREAD_VARS}
    try:
        import torch

        threads["torch.get_num_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "git": info["git"],
            "versions": info["versions"], "machine": m, "threads": threads, "argv": info["argv"]}


def peak_rss_mb() -> float:
    """Peak resident set of this process since it started (or since `reset_peak_rss`): VmHWM.

    Not ru_maxrss: Linux keeps that across fork + exec, so a fresh interpreter started by a
    big process (`isolated` under `make bench`, whose train part had grown to 13.5 GB) read
    its parent's peak: the memory and scale sections reported 13,520 MB for ~0.5-3 GB
    processes (2026-12-03-724482f). ru_maxrss (KiB) only where /proc is missing."""
    hwm = _status_mb("VmHWM")
    if not math.isnan(hwm):
        return hwm
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_now_mb() -> float:
    """Resident set of this process now (VmRSS), and `reset_peak_rss` + `peak_rss_mb`: the
    peak since a point (VmHWM after /proc/self/clear_refs 5), so one process can tell which stage
    of its run held the memory. Linux only; elsewhere NaN."""
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


def isolated(script, args: list[str], timeout: float = 3600) -> dict:
    """Run `script --dump FILE args` in a fresh interpreter (its own peak RSS, its own
    imports) and return the section it dumped; on failure a dict with the error."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        p = subprocess.run([sys.executable, str(script), "--dump", f.name, *args], capture_output=True,
                           text=True, timeout=timeout)
        if p.returncode != 0:
            return {"error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:] }"}
        return json.loads(Path(f.name).read_text())


def dump_section(section: dict, path) -> int:
    Path(path).write_text(json.dumps(section, default=str))
    return 0


class Results(dict):
    """Sections of one benchmark run, with the header; `write` adds the load average after."""

    def __init__(self, name: str = "bench"):
        super().__init__()
        self.name = name
        self.head = header()

    def write(self, out=None) -> Path:
        self.head["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        out = Path(out or ROOT / "benchmarks" / "results")
        out.mkdir(parents=True, exist_ok=True)
        sha = (self.head["git"]["sha"] or "nogit")[:7] + ("-dirty" if self.head["git"]["dirty"] else "")
        stem = f"{dt.date.today().isoformat()}-{sha}" + ("" if self.name == "bench" else f"-{self.name}")
        doc = {**self.head, "sections": dict(self)}
        path = out / f"{stem}.json"
        path.write_text(json.dumps(doc, indent=1, default=str))
        (out / f"{stem}.md").write_text(markdown(doc))
        print(f"wrote {path} and {path.with_suffix('.md').name}", flush=True)
        return path


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _flat(v, name + ".")
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                rows += _flat(item, f"{name}[{i}].")
        else:
            rows.append((name, v))
    return rows


def markdown(doc: dict) -> str:
    """The results as tables: the header, then one table per section (`ratio`/`target` rows first)."""
    m, g = doc["machine"], doc["git"]
    lines = [f"# Benchmarks {doc['date']} — git {(g['sha'] or '?')[:10]}{' (dirty)' if g['dirty'] else ''}", "",
             "| | |", "|---|---|",
             f"| machine | {m.get('cpu')} — {m.get('cpu_count')} cores, {m.get('platform')} |",
             f"| GPU | {', '.join(m['gpu']) if m.get('gpu') else 'none'} |",
             f"| load average before / after (1, 5, 15 min) | {m.get('loadavg_before')} / {m.get('loadavg_after')} |",
             f"| nice | {m.get('nice')} |",
             *([f"| peak RSS of the bench process after each part (MB) | {m['bench_process_peak_rss_mb']} |"]
               if m.get("bench_process_peak_rss_mb") else []),
             f"| threads | {', '.join(f'{k}={v}' for k, v in doc['threads'].items())} |",
             f"| versions | {', '.join(f'{k} {v}' for k, v in doc['versions'].items() if v)} |", ""]
    for name, sec in doc["sections"].items():
        lines += [f"## {name}", ""]
        if isinstance(sec, dict) and sec.get("about"):
            lines += [str(sec["about"]), ""]
        rows = _flat(sec) if isinstance(sec, dict) else [(name, sec)]
        rows = [r for r in rows if r[0] != "about"]
        rows.sort(key=lambda r: 0 if ("target" in r[0] or "ratio" in r[0]) else 1)
        lines += ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    return "\n".join(lines)


def script_main(name: str, doc: str, add_args, run, argv=None, only: dict | None = None) -> int:
    """The command line of each benchmark script: its own args, --out; `run(args)` returns
    {section: figures}, written as benchmarks/results/<date>-<sha>-<name>.json + .md.
    `only` {mode: fn(args) -> dict} are hidden modes that dump one section to --dump
    (what `isolated` runs in a fresh interpreter)."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_args(p)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    if only:
        p.add_argument("--only", choices=sorted(only), help=argparse.SUPPRESS)
        p.add_argument("--dump", help=argparse.SUPPRESS)
        p.add_argument("--path", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if only and a.only:
        return dump_section(only[a.only](a), a.dump)
    res = Results(name)
    res.update(run(a))
    res.write(a.out)
    return 0
