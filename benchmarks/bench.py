"""`make bench`: every CPU benchmark in one run, one results file + table.

    .venv/bin/python benchmarks/bench.py [--quick] [--parts features,clips,train,memory]

Writes benchmarks/results/<date>-<sha>.json and .md (machine, cores, GPU, library versions,
git sha, thread settings, load average before/after). The figures that matter are the
ratios inside one file; absolute times on a shared 2-core machine are not comparable across
files. `--quick` shrinks every workload (same code paths) for a loaded machine. GPU figures:
`make bench-gpu` (benchmarks/bench_gpu.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Results, peak_rss_mb  # noqa: E402

import bench_clips  # noqa: E402
import bench_features  # noqa: E402
import bench_memory  # noqa: E402
import bench_train  # noqa: E402

PARTS = {"features": bench_features, "clips": bench_clips, "train": bench_train, "memory": bench_memory}
QUICK = {"demo_n": 4, "demo_seconds": 10.0, "video_clips": 40, "videos": 16, "frames": 2000,
         "head_steps": 4, "rounds": 3, "scale_div": 100, "minutes": "1,10"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for mod in PARTS.values():
        mod.add_args(p)
    p.add_argument("--quick", action="store_true", help="smaller workloads, same code paths")
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of " + ", ".join(PARTS))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--tag", default="bench", help="results file <date>-<sha>[-TAG].json (default: no tag)")
    a = p.parse_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
    res = Results(a.tag)
    res.head["quick"] = a.quick
    for name in a.parts.split(","):
        try:
            out = PARTS[name].run(a)
        except Exception as e:  # noqa: BLE001  (one part failing still leaves the others' figures)
            out = {f"{name}_error": f"{type(e).__name__}: {e}"}
        res.update(out)
        # this process's own peak after each part: a part that holds the machine's RAM shows
        # here (cut_videos once made it 13.5 GB)
        res.head["machine"].setdefault("bench_process_peak_rss_mb", {})[name] = peak_rss_mb()
        res.write(a.out)   # after every part: a late failure keeps what was measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
