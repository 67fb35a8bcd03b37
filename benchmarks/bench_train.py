"""Training data path benchmark: why the trainer loads whole videos once instead of reading
windows from Zarr, and how fast the published LFAN steps on this machine.

Measures, on a synthetic store of Aff-Wild2-like videos written with the real writer:
  - random 300-frame windows read straight from Zarr (per window)           windows/s
  - load the corpus once with read_concat                                     seconds, MB/s
  - random windows gathered from the contiguous tensor (one indexing op)     windows/s (CPU, GPU)
  - LFAN (published sizes: 512 -> 4x128, 39/64 -> 4x32) train steps, batch 8 windows/s (CPU, GPU)
Results: printed, and written to benchmarks/results/train-<date>-<sha>.json with machine,
library versions and git sha. Sizes: --videos, --frames, --dim.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import runinfo  # noqa: E402
from experiments.windows import gather, index_tensor, window_table  # noqa: E402
from heads.lfan import LeaderFollower  # noqa: E402
from store import FeatureStore, read_concat  # noqa: E402
from store.reader import manifest_rows  # noqa: E402


def write_store(root: Path, videos: int, frames: int, dim: int) -> list[str]:
    rng = np.random.default_rng(0)
    fs = FeatureStore(root)
    prov = {"version": "1", "params": {"dim": dim}, "weights_sha256": None, "libraries": {}}
    from store.keys import make_key

    key = make_key("1", prov["params"], None, {})
    kh = fs.key("bench", key, prov)
    ids = []
    for v in range(videos):
        vid = f"v{v:04d}"
        w = kh.begin_video(vid)
        for s in range(0, frames, 1000):
            n = min(1000, frames - s)
            w.append({"data": rng.standard_normal((n, dim)).astype(np.float16),
                      "mask": np.ones(n, bool), "t": (np.arange(s, s + n) / 30.0)})
        w.attrs["fps"] = 30.0
        w.commit()
        ids.append(vid)
    return ids, key


def bench_zarr_windows(root, key, ids, frames, n=300, seconds=10.0) -> float:
    import zarr

    rng = np.random.default_rng(1)
    groups = {v: zarr.open_group(str(Path(root) / "features" / "bench" / key / v), mode="r") for v in ids}
    done, t0 = 0, time.perf_counter()
    while done < n and time.perf_counter() - t0 < seconds:
        v = ids[rng.integers(len(ids))]
        s = int(rng.integers(0, frames - 300))
        _ = groups[v]["data"][s:s + 300]
        _ = groups[v]["mask"][s:s + 300]
        done += 1
    return done / (time.perf_counter() - t0)


def bench_gather(x, table, offsets, device, batch=8, seconds=5.0) -> float:
    rng = np.random.default_rng(2)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pick = table.subset(rng.integers(0, len(table), size=batch))
        idx, valid = index_tensor(pick, offsets, 300, device=device)
        out = gather(x, idx, valid)
        done += batch
    if device.type == "cuda":
        torch.cuda.synchronize()
    _ = out
    return done / (time.perf_counter() - t0)


def bench_lfan(device, batch=8, steps=20) -> float:
    torch.manual_seed(0)
    model = LeaderFollower(512, [64, 39], visual_channels=(128,) * 4, audio_channels=(32,) * 4,
                           n_outputs=2).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-5)
    v = torch.randn(batch, 300, 512, device=device)
    a = [torch.randn(batch, 300, 64, device=device), torch.randn(batch, 300, 39, device=device)]
    y = torch.rand(batch, 300, 2, device=device) * 2 - 1

    def step():
        loss = ((model(v, a) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    res: dict = {"what": "train data path", "videos": a.videos, "frames": a.frames, "dim": a.dim}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ids, key = write_store(Path(tmp), a.videos, a.frames, a.dim)
        res["write_s"] = round(time.perf_counter() - t0, 2)
        res["zarr_windows_per_s"] = round(bench_zarr_windows(tmp, key, ids, a.frames), 1)
        t0 = time.perf_counter()
        c = read_concat(tmp, "bench", key, [r["video_id"] for r in manifest_rows(tmp, "bench", key)])
        res["read_concat_s"] = round(time.perf_counter() - t0, 2)
        res["read_concat_mb_per_s"] = round(c.arrays["data"].nbytes / 1e6 / res["read_concat_s"], 1)
    lengths = np.diff(c.offsets)
    table = window_table(lengths, 300, 200)
    for dev in devices:
        x = torch.as_tensor(c.arrays["data"]).to(dev)
        res[f"gather_windows_per_s_{dev.type}"] = round(bench_gather(x, table, c.offsets, dev), 1)
        res[f"lfan_train_windows_per_s_{dev.type}"] = round(bench_lfan(dev), 1)
    res["ram_vs_zarr"] = round(res["gather_windows_per_s_cpu"] / max(res["zarr_windows_per_s"], 1e-9), 1)
    info = runinfo.collect()
    out = {"results": res, **info, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for k, v in res.items():
        print(f"{k:36s} {v}")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    sha = (info["git"]["sha"] or "nogit")[:8]
    path = Path(a.out) / f"train-{datetime.now():%Y%m%d-%H%M%S}-{sha}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
