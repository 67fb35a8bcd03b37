"""Training data path: windows/s of each way to feed a head, and each head's steps/s fed by
the trainer's own data path beside the same head fed a pre-made batch (its compute ceiling).

Sections (all measured in one process, so their ratios hold on a busy machine):
  windows  random 300-frame windows, 512-d float16 + mask, on a store written with the real
           writer: read per window from Zarr; a reference-style loader (np.load(mmap_mode='c')
           [s:s+300] per window per modality under a torch DataLoader, as the ABAW2 code
           does); the trainer's path (read_concat once, then one gather per batch).
  heads    per study (abaw2 lfan, eri, avcpnet, emodb sequence): experiments.fit.train_epoch on
           a synthetic in-memory Corpus (the trainer's Task.batch per step) vs the same loop
           whose Task.batch returns one batch made before the clock (no data path at all).
  scale    an abaw2 epoch (batch 256) on a 1/--scale-div slice of an Aff-Wild2-sized cache
           (2.8 M frames; 512 visual + 64 log-mel + 39 MFCC, float16 on disk): store -> corpus
           load time, epoch time, host RAM of training vs the bytes of the features.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import isolated, peak_rss_mb, script_main  # noqa: E402

AFFWILD2_FRAMES = 2_800_000
DIMS = {"backbone": 512, "logmel": 64, "mfcc": 39, "mesh": 1404, "fer": 128}


# ----------------------------------------------------------------------------- store

def write_store(root: Path, videos: int, frames: int, dims: dict[str, int]) -> dict[str, str]:
    """One key per modality, `videos` videos of `frames` frames, float16 data + mask + t."""
    from store import FeatureStore
    from store.keys import make_key

    rng = np.random.default_rng(0)
    fs = FeatureStore(root)
    keys = {}
    for name, dim in dims.items():
        prov = {"version": "1", "params": {"dim": dim}, "weights_sha256": None, "libraries": {}}
        key = make_key("1", prov["params"], None, {})
        kh = fs.key(f"bench_{name}", key, prov)
        for v in range(videos):
            w = kh.begin_video(f"v{v:04d}")
            for s in range(0, frames, 2048):
                n = min(2048, frames - s)
                w.append({"data": rng.standard_normal((n, dim)).astype(np.float16),
                          "mask": np.ones(n, bool), "t": np.arange(s, s + n) / 30.0})
            w.attrs["fps"] = 30.0
            w.commit()
        keys[name] = key
    return keys


def bench_zarr_windows(root, name, key, videos, frames, seconds=5.0) -> float:
    import zarr

    rng = np.random.default_rng(1)
    groups = [zarr.open_group(str(Path(root) / "features" / f"bench_{name}" / key / f"v{v:04d}"), mode="r")
              for v in range(videos)]
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        g = groups[rng.integers(videos)]
        s = int(rng.integers(0, frames - 300))
        _ = g["data"][s:s + 300], g["mask"][s:s + 300]
        done += 1
    return done / (time.perf_counter() - t0)


def bench_reference_loader(tmp: Path, arrays: list[np.ndarray], lengths, batch=8, seconds=5.0) -> float:
    """np.load(mmap_mode='c')[s:s+300] per window per modality, batched by a DataLoader."""
    import torch

    paths = []
    for m, x in enumerate(arrays):
        off = np.r_[0, np.cumsum(lengths)]
        ps = []
        for v in range(len(lengths)):
            p = tmp / f"ref_m{m}_v{v}.npy"
            np.save(p, x[off[v]:off[v + 1]])
            ps.append(p)
        paths.append(ps)
    starts = [(v, s) for v, n in enumerate(lengths) for s in range(0, max(int(n) - 300, 1), 200)]

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(starts)

        def __getitem__(self, i):
            v, s = starts[i]
            return [torch.from_numpy(np.load(ps[v], mmap_mode="c")[s:s + 300].astype(np.float32)) for ps in paths]

    dl = torch.utils.data.DataLoader(Windows(), batch_size=batch, shuffle=True, num_workers=0)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in dl:
            done += len(b[0])
            if time.perf_counter() - t0 >= seconds:
                break
    return done / (time.perf_counter() - t0)


def bench_gather(xs, offsets, batch=8, seconds=5.0) -> float:
    import torch

    from experiments.windows import gather, index_tensor, window_table

    table = window_table(np.diff(offsets), 300, 200)
    rng = np.random.default_rng(2)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pick = table.subset(rng.integers(0, len(table), size=batch))
        idx, valid = index_tensor(pick, offsets, 300, device=xs[0].device)
        _ = [gather(x, idx, valid) for x in xs]
        done += batch
    if xs[0].device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def windows_section(a) -> dict:
    import torch

    from store import read_concat

    dims = {"backbone": 512, "logmel": 64, "mfcc": 39}
    res = {"about": f"{a.videos} videos x {a.frames} frames, 300-frame windows, batch 8; modalities "
                    f"{dims} float16 on disk", "windows_per_s": {}}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        t0 = time.perf_counter()
        keys = write_store(Path(tmp), a.videos, a.frames, dims)
        res["write_s"] = round(time.perf_counter() - t0, 2)
        w = res["windows_per_s"]
        w["zarr_per_window_visual_only"] = round(bench_zarr_windows(tmp, "backbone", keys["backbone"],
                                                                    a.videos, a.frames), 1)
        ids = [f"v{v:04d}" for v in range(a.videos)]
        t0 = time.perf_counter()
        cs = {n: read_concat(tmp, f"bench_{n}", k, ids) for n, k in keys.items()}
        res["read_concat_s"] = round(time.perf_counter() - t0, 2)
        nbytes = sum(c.arrays["data"].nbytes for c in cs.values())
        res["read_concat_mb_per_s"] = round(nbytes / 1e6 / res["read_concat_s"], 1)
        offsets = cs["backbone"].offsets
        arrays = [c.arrays["data"] for c in cs.values()]
        w["reference_mmap_dataloader_3_modalities"] = round(
            bench_reference_loader(Path(tmp), arrays, np.diff(offsets)), 1)
    xs = [torch.as_tensor(x.astype(np.float32)) for x in arrays]
    w["trainer_gather_cpu_3_modalities"] = round(bench_gather(xs, offsets), 1)
    if torch.cuda.is_available():
        w["trainer_gather_cuda_3_modalities"] = round(bench_gather([x.cuda() for x in xs], offsets), 1)
    res["ratio_gather_vs_reference_loader (target >= 20)"] = round(
        w["trainer_gather_cpu_3_modalities"] / w["reference_mmap_dataloader_3_modalities"], 1)
    res["ratio_gather_vs_zarr_per_window"] = round(
        w["trainer_gather_cpu_3_modalities"] / w["zarr_per_window_visual_only"], 1)
    return res


# ----------------------------------------------------------------------------- heads

STUDIES = {"abaw2": 3000, "eri": 150, "avcpnet": 480, "emodb": 280}   # frames per synthetic video


def synthetic_corpus(cfg, videos: int, frames: int, device, rng=None):
    """An in-memory Corpus shaped like `cfg`'s features (widths from DIMS), random labels."""
    import torch

    from experiments.data import Corpus, Modality

    rng = rng or np.random.default_rng(0)
    n = videos * frames
    offsets = np.arange(videos + 1, dtype=np.int64) * frames
    mods = {}
    for name, specs in cfg.features.items():
        widths = [DIMS.get(s.extractor, 64) if not (s.extractor == "mfcc" and s.params.get("n_mfcc"))
                  else int(s.params["n_mfcc"]) * (1 if s.params.get("deltas") is False else 3) for s in specs]
        g = torch.Generator(device=device).manual_seed(len(mods))
        x = torch.randn(n, sum(widths), generator=g, device=device)
        mods[name] = Modality(name, x, torch.ones(n, dtype=torch.bool, device=device), widths)
    lab = cfg.labels
    rows = []
    for v in range(videos):
        labels = {}
        if lab.source == "clip":
            for t in lab.targets:
                labels[t] = (lab.classes[v % len(lab.classes)] if lab.classes else float(rng.uniform(0, 1)))
        rows.append({"video_id": f"v{v:04d}", "labels": labels, "split": "train"})
    labels = None
    if lab.source == "frames":
        labels = torch.rand(n, len(lab.targets), device=device) * 2 - 1
    return Corpus(rows=rows, video_ids=[r["video_id"] for r in rows], offsets=offsets,
                  frame_index=np.concatenate([np.arange(frames)] * videos), times=np.zeros(n),
                  modalities=mods, label_names=list(lab.targets) if labels is not None else [],
                  labels=labels, features=[])


def _epoch_rates(task, model, cfg, device, premade: dict, rounds: int, amp: bool = False) -> tuple[float, float]:
    """Optimizer steps/s of experiments.fit.train_epoch with the trainer's Task.batch and with
    `premade` in its place, epochs alternated `rounds` times (best of each: the neighbours'
    load hits both alike)."""
    import torch

    from experiments.fit import train_epoch
    from experiments.optim import make_optimizer

    opt = make_optimizer(cfg.optim, model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    gen = torch.Generator().manual_seed(0)
    real = task.batch
    steps = -(-task.n_samples("train") // cfg.train.batch_size)
    best = {"real": float("inf"), "premade": float("inf")}

    def epoch(kind):
        task.batch = real if kind == "real" else (lambda role, sel, *args, **kw: premade)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_epoch(task, model, opt, scaler, gen, cfg, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    try:
        epoch("real")                                                   # warm-up
        for _ in range(rounds):
            for kind in ("real", "premade"):
                best[kind] = min(best[kind], epoch(kind))
    finally:
        task.batch = real
    return steps / best["real"], steps / best["premade"]


def head_rates(study: str, device, videos: int, rounds: int = 3, overrides=(), amp: bool = False) -> dict:
    import torch

    from experiments import config, tasks

    cfg = config.load(study, list(overrides))
    torch.manual_seed(0)
    corpus = synthetic_corpus(cfg, videos, STUDIES[study], device)
    roles = {"train": list(range(videos)), "val": [0], "test": [1]}
    task = tasks.make(cfg, corpus, roles, device)
    model = task.build_model().to(device)
    sel = torch.arange(min(cfg.train.batch_size, task.n_samples("train")), device=device)
    premade = task.batch("train", sel)
    real, ceiling = _epoch_rates(task, model, cfg, device, premade, rounds, amp)
    return {"head": cfg.head.name, "batch_size": cfg.train.batch_size, "samples": task.n_samples("train"),
            "steps_per_s_data_path": round(real, 2), "steps_per_s_premade": round(ceiling, 2),
            "ratio (target >= 0.9)": round(real / ceiling, 3)}


def heads_section(a) -> dict:
    import torch

    res = {"about": "optimizer steps/s of experiments.fit.train_epoch per published study config on a "
                    "synthetic in-memory corpus (trainer's Task.batch) vs a pre-made batch (compute "
                    "ceiling); CPU fp32, torch threads as in the header"}
    for study in STUDIES:
        try:
            res[study] = head_rates(study, torch.device("cpu"), a.head_videos)
        except Exception as e:  # noqa: BLE001  (a benchmark reports, the others still run)
            res[study] = {"error": f"{type(e).__name__}: {e}"}
        print(f"[heads] {study}: {res[study]}", flush=True)
    return res


# ----------------------------------------------------------------------------- scale

def scale_section(a) -> dict:
    """abaw2 epoch on 1/scale_div of Aff-Wild2 (frames), store -> load_corpus-like read -> train_epoch."""
    import torch

    from experiments import config, tasks
    from experiments.data import Corpus, Modality
    from store import read_concat

    frames_total = AFFWILD2_FRAMES // a.scale_div
    per_video = 3000
    videos = max(2, frames_total // per_video)
    dims = {"backbone": 512, "logmel": 64, "mfcc": 39}
    res = {"about": f"1/{a.scale_div} of Aff-Wild2: {videos} videos x {per_video} frames = "
                    f"{videos * per_video} frames, {dims} float16 in the store; abaw2 lfan, batch 256, "
                    "CPU fp32 (the GPU figure, bf16, is in bench_gpu)"}
    rss0 = peak_rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        t0 = time.perf_counter()
        keys = write_store(Path(tmp), videos, per_video, dims)
        res["write_store_s"] = round(time.perf_counter() - t0, 1)
        ids = [f"v{v:04d}" for v in range(videos)]
        t0 = time.perf_counter()
        cs = {n: read_concat(tmp, f"bench_{n}", k, ids) for n, k in keys.items()}
        res["read_concat_s"] = round(time.perf_counter() - t0, 2)
    feature_bytes = sum(c.arrays["data"].nbytes for c in cs.values())
    cfg = config.load("abaw2", ["train.batch_size=256"])
    base = synthetic_corpus(cfg, 2, 10, torch.device("cpu"))   # rows/labels shape only
    n = videos * per_video
    offsets = cs["backbone"].offsets
    mods = {}
    for (name, _specs), c in zip(cfg.features.items(), cs.values()):
        x = torch.from_numpy(c.arrays["data"].astype(np.float32))
        mods[name] = Modality(name, x, torch.ones(n, dtype=torch.bool), [x.shape[1]])
    del cs
    rng = np.random.default_rng(0)
    corpus = Corpus(rows=[{"video_id": v, "labels": {}, "split": "train"} for v in ids], video_ids=ids,
                    offsets=offsets, frame_index=np.zeros(n, np.int64), times=np.zeros(n), modalities=mods,
                    label_names=base.label_names,
                    labels=torch.as_tensor(rng.uniform(-1, 1, (n, 2)).astype(np.float32)), features=[])
    task = tasks.make(cfg, corpus, {"train": list(range(videos)), "val": [0], "test": [1]}, torch.device("cpu"))
    model = task.build_model()
    from experiments.fit import train_epoch
    from experiments.optim import make_optimizer

    opt = make_optimizer(cfg.optim, model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    t0 = time.perf_counter()
    train_epoch(task, model, opt, scaler, torch.Generator().manual_seed(0), cfg, torch.device("cpu"))
    res["epoch_s"] = round(time.perf_counter() - t0, 2)
    res["windows"] = task.n_samples("train")
    res["windows_per_s"] = round(res["windows"] / res["epoch_s"], 1)
    res["feature_bytes_float16_mb"] = round(feature_bytes / 1e6, 1)
    res["corpus_float32_mb"] = round(sum(m.x.nbytes for m in mods.values()) / 1e6, 1)
    res["peak_rss_mb"] = peak_rss_mb()
    res["peak_rss_before_mb"] = rss0
    res["ratio_rss_to_feature_bytes"] = round(res["peak_rss_mb"] / res["feature_bytes_float16_mb"], 2)
    res["full_size_epoch_s_extrapolated_cpu"] = round(res["epoch_s"] * a.scale_div, 1)
    return res


def add_args(p) -> None:
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--head-videos", type=int, default=24)
    p.add_argument("--scale-div", type=int, default=20)
    p.add_argument("--no-scale", action="store_true")


def run(a) -> dict:
    import torch

    torch.manual_seed(0)
    out = {"windows": windows_section(a)}
    print(f"[windows] {out['windows']}", flush=True)
    out["heads"] = heads_section(a)
    if not a.no_scale:   # in a fresh process: its peak RSS is the training's alone
        out["scale"] = isolated(__file__, ["--only", "scale", "--scale-div", str(a.scale_div)])
        print(f"[scale] {out['scale']}", flush=True)
    return out


def main(argv=None) -> int:
    return script_main("train", __doc__, add_args, run, argv, only={"scale": scale_section})


if __name__ == "__main__":
    sys.exit(main())
