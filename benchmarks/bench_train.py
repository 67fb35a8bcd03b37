"""Training data path: windows/s of each way to feed a head, and each head's steps/s fed by
the trainer's own data path beside the same head fed a pre-made batch (its compute ceiling).

Sections (all measured in one process, so their ratios hold on a busy machine):
  windows  random 300-frame windows, 512-d float16 + mask, on a store written with the real
           writer: read per window from Zarr; a reference-style loader (np.load(mmap_mode='c')
           [s:s+300] per window per modality under a torch DataLoader, as the ABAW2 code
           does); the trainer's path (read_concat once, then one gather per batch); and the copy ceiling
           (the batch's bytes as one contiguous float16 -> float32 copy per modality).
  heads    per study (abaw2 lfan, eri, avcpnet, emodb sequence): experiments.fit.train_epoch on
           a synthetic in-memory Corpus (the trainer's Task.batch per step) vs the same loop
           whose Task.batch returns the batch of the same samples made before the epoch (no data
           path at all, the same content: the ceiling).
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
from common import isolated, peak_rss_mb, reset_peak_rss, rss_now_mb, script_main  # noqa: E402

AFFWILD2_FRAMES = 2_800_000
DIMS = {"backbone": 512, "logmel": 64, "mfcc": 39, "mesh": 1404, "fer": 128}
FLOAT32_EXTRACTORS = {"prosody", "opensmile"}     # stored float32 (the others float16)


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


def corpus_from_store(cfg, cs: dict, rng=None):
    """The trainer's Corpus from `read_concat` results, built as experiments.data.load_corpus
    does (float16 from the store stays float16, one tensor per modality of `cfg`, random labels)."""
    import torch

    from experiments.data import Corpus, Modality, corpus_dtype

    rng = rng or np.random.default_rng(0)
    first = next(iter(cs.values()))
    offsets = first.offsets.astype(np.int64)
    n = int(offsets[-1])
    mods = {}
    for (name, _specs), c in zip(cfg.features.items(), cs.values()):
        d = c.arrays["data"]
        x = torch.from_numpy(d.reshape(n, -1).astype(corpus_dtype(d.dtype), copy=False))
        mods[name] = Modality(name, x, torch.from_numpy(c.arrays["mask"].astype(bool)), [x.shape[1]])
    ids = list(first.video_ids)
    return Corpus(rows=[{"video_id": v, "labels": {}, "split": "train"} for v in ids], video_ids=ids,
                  offsets=offsets, frame_index=np.concatenate([np.arange(k) for k in np.diff(offsets)]),
                  times=np.zeros(n), modalities=mods, label_names=list(cfg.labels.targets),
                  labels=torch.as_tensor(rng.uniform(-1, 1, (n, len(cfg.labels.targets))).astype(np.float32)),
                  features=[])


def _interleaved(methods: dict, rounds: int, burst: float) -> dict:
    """Windows/s of each method, run in turns of `burst` wall seconds for `rounds` rounds, so a
    neighbour's load hits every method alike: per method the wall rate and the CPU-time rate
    (this process only; every method here runs in this process)."""
    tot = {k: [0, 0.0, 0.0] for k in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            w0, c0, done = time.perf_counter(), time.process_time(), 0
            while time.perf_counter() - w0 < burst:
                done += fn()
            tot[name][0] += done
            tot[name][1] += time.perf_counter() - w0
            tot[name][2] += time.process_time() - c0
    return {k: {"windows": d, "per_s_wall": round(d / w, 1), "per_s_cpu": round(d / max(c, 1e-9), 1)}
            for k, (d, w, c) in tot.items()}


def reference_loader(tmp: Path, arrays: list[np.ndarray], offsets, batch: int = 8):
    """The ABAW2 code's way: one .npy per video per modality, each window read as
    np.load(mmap_mode='c')[s:s+300].astype(float32) in a Dataset, batched by a DataLoader with
    the default num_workers=0 (its experiment builds the loader so) and shuffled windows.
    Lighter than the reference: no label file and no Normalize transform per window."""
    import torch

    lengths = np.diff(offsets)
    paths = []
    for m, x in enumerate(arrays):
        ps = []
        for v in range(len(lengths)):
            p = tmp / f"ref_m{m}_v{v}.npy"
            np.save(p, x[offsets[v]:offsets[v + 1]])
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
    it = iter(dl)

    def step() -> int:
        nonlocal it
        try:
            b = next(it)
        except StopIteration:
            it = iter(dl)
            b = next(it)
        return len(b[0])
    return step


def windows_section(a) -> dict:
    import torch

    from experiments import config, tasks
    from store import read_concat

    import zarr

    dims = {"backbone": 512, "logmel": 64, "mfcc": 39}
    batch = 8
    res = {"about": f"{a.videos} videos x {a.frames} frames, 300-frame windows (hop 200), batch {batch} (abaw2's); "
                    f"modalities {dims} float16 on disk; methods run in turns ({a.rounds} rounds of {a.burst} s "
                    "each) so load hits all alike; the trainer's path is experiments.tasks FrameTask.batch "
                    "(features + labels + masks) on the corpus load_corpus builds (float16 kept, float32 batches); the reference: "
                    "np.load(mmap_mode='c')[s:s+300] per window per modality, DataLoader num_workers=0 as the "
                    "ABAW2 code", "windows_per_s": {}}
    cfg = config.load("abaw2", [f"train.batch_size={batch}"])
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        t0 = time.perf_counter()
        keys = write_store(Path(tmp), a.videos, a.frames, dims)
        res["write_s"] = round(time.perf_counter() - t0, 2)
        ids = [f"v{v:04d}" for v in range(a.videos)]
        t0 = time.perf_counter()
        cs = {n: read_concat(tmp, f"bench_{n}", k, ids) for n, k in keys.items()}
        res["read_concat_s"] = round(time.perf_counter() - t0, 2)
        nbytes = sum(c.arrays["data"].nbytes for c in cs.values())
        res["read_concat_mb_per_s"] = round(nbytes / 1e6 / res["read_concat_s"], 1)
        groups = [zarr.open_group(str(Path(tmp) / "features" / "bench_backbone" / keys["backbone"] / v), mode="r")
                  for v in ids]

        def zarr_window() -> int:
            g = groups[rng.integers(len(groups))]
            s = int(rng.integers(0, a.frames - 300))
            _ = g["data"][s:s + 300], g["mask"][s:s + 300]
            return 1

        offsets = cs["backbone"].offsets
        corpus = corpus_from_store(cfg, cs)
        roles = {"train": list(range(a.videos)), "val": [0], "test": [1]}
        task = tasks.make(cfg, corpus, roles, torch.device("cpu"))
        n = task.n_samples("train")
        xs = [m.x for m in corpus.modalities.values()]
        span = batch * 300

        def copy_ceiling() -> int:
            """The same bytes as one batch's features, float16 -> float32, as one contiguous copy per
            modality into a fresh batch: what any gather of these windows costs at least."""
            lo = int(rng.integers(0, len(xs[0]) - span))
            _ = [torch.empty((span,) + tuple(x.shape[1:]), dtype=torch.float32).copy_(x[lo:lo + span]) for x in xs]
            return batch

        methods = {"zarr_per_window_visual_only": zarr_window,
                   "copy_ceiling_3_modalities": copy_ceiling,
                   "reference_mmap_dataloader_3_modalities": reference_loader(
                       Path(tmp), [c.arrays["data"] for c in cs.values()], offsets, batch),
                   "trainer_batch_cpu_3_modalities": lambda: len(task.batch("train", torch.randint(n, (batch,)))["x"][0])}
        if torch.cuda.is_available():
            dev = torch.device("cuda")
            for m in corpus.modalities.values():
                m.x, m.mask = m.x.to(dev), m.mask.to(dev)
            corpus.labels = corpus.labels.to(dev)
            gpu_task = tasks.make(cfg, corpus, roles, dev)

            def on_gpu() -> int:   # synchronised per batch: what a step waits for
                b = gpu_task.batch("train", torch.randint(n, (batch,), device=dev))
                torch.cuda.synchronize()
                return len(b["x"][0])
            methods["trainer_batch_cuda_3_modalities"] = on_gpu
        w = res["windows_per_s"] = _interleaved(methods, a.rounds, a.burst)
    ours, ref, zr = (w["trainer_batch_cpu_3_modalities"], w["reference_mmap_dataloader_3_modalities"],
                     w["zarr_per_window_visual_only"])
    res["ratio_trainer_vs_reference_wall (target >= 20)"] = round(ours["per_s_wall"] / ref["per_s_wall"], 1)
    res["ratio_trainer_vs_reference_cpu_time"] = round(ours["per_s_cpu"] / ref["per_s_cpu"], 1)
    res["ratio_trainer_vs_zarr_per_window_wall"] = round(ours["per_s_wall"] / zr["per_s_wall"], 1)
    # the trainer's share of a plain copy of its bytes: how much of the gap to 20x any loader could close
    res["ratio_trainer_vs_copy_ceiling_wall"] = round(ours["per_s_wall"] / w["copy_ceiling_3_modalities"]["per_s_wall"], 3)
    return res


# ----------------------------------------------------------------------------- heads

STUDIES = {"abaw2": 3000, "eri": 150, "avcpnet": 480, "emodb": 280}   # frames per synthetic video


def synthetic_corpus(cfg, videos: int, frames: int, device, rng=None):
    """An in-memory Corpus shaped like `cfg`'s features (widths from DIMS, dtypes as the
    extractors store them), random labels."""
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
        # the dtype load_corpus gives the modality: float16 unless a feature is stored float32
        dtype = torch.float32 if any(s.extractor in FLOAT32_EXTRACTORS for s in specs) else torch.float16
        x = torch.randn(n, sum(widths), generator=g, device=device).to(dtype)
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


def _step_times(task, model, cfg, device, steps: int, amp: bool = False) -> dict:
    """Seconds per step of experiments.fit.train_epoch, its Task.batch swapped between the
    trainer's own and a pre-made one per accumulation cycle (train.accumulate batches, one
    optimizer step; real, pre-made, pre-made, real, ...: load drifts hit both alike). Why per
    cycle: swapped per batch, avcpnet's 4-batch cycle put every optimizer step (and its grad
    clipping) on a real batch, 10 % of its step time measured as "data path" (0.84-0.88 vs
    0.99 per cycle, 2026-12-03). The pre-made batches hold the samples the step draws (the
    epoch's order replayed from a copy of its generator, made before the epoch), so only the
    data path differs between kinds. A cycle is timed from its first batch() call to the next
    cycle's, so it holds the data path, forward, backward and the optimizer; per kind the
    median per-batch time of its cycles, in CPU time of this process (what a neighbour's load
    does not inflate, as long as torch runs on one thread here) and in wall time; and the
    median over adjacent (real, pre-made) cycle pairs of their ratio, which a load change
    between cycles far apart does not move. `steps` cycles of each kind. On CUDA each batch
    is synchronised before its clock is read."""
    import torch

    from experiments.fit import train_epoch
    from experiments.optim import make_optimizer

    opt = make_optimizer(cfg.optim, model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    gen = torch.Generator().manual_seed(0)
    real = task.batch
    n, bs, acc = task.n_samples("train"), cfg.train.batch_size, max(1, int(cfg.train.accumulate or 1))
    marks: list[tuple[str, float, float]] = []   # (kind, wall, cpu) at each batch() call of one epoch
    premade: dict[int, tuple] = {}

    def kind_of(k: int) -> str:
        return "real" if (k // acc) % 4 in (0, 3) else "premade"

    def premake() -> None:
        """The batches train_epoch will ask for at the pre-made steps (its order: randperm of gen)."""
        g = torch.Generator()
        g.set_state(gen.get_state())
        order = torch.randperm(n, generator=g).to(device)
        premade.clear()
        premade.update({k: (order[lo:lo + bs], real("train", order[lo:lo + bs]))
                        for k, lo in enumerate(range(0, n, bs)) if kind_of(k) == "premade"})

    def clock():
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter(), time.process_time()

    def swapped(role, sel, *args, **kw):
        k = len(marks)
        kind = kind_of(k)
        marks.append((kind, *clock()))
        if kind == "real":
            return real(role, sel, *args, **kw)
        want, b = premade[k]
        if not torch.equal(want, sel):
            raise RuntimeError("train_epoch no longer draws randperm(n, generator=gen) batches: fix premake")
        return b

    per = {"real": [], "premade": []}
    pairs = []                                      # (real, premade) cycles next to each other
    task.batch = swapped
    try:
        for epoch in range(100):
            marks.clear()
            premake()
            train_epoch(task, model, opt, scaler, gen, cfg, device)
            starts = marks[::acc]                   # each cycle's first batch() call; the last has no end
            seq = [(kind, ((w1 - w0) / acc, (c1 - c0) / acc)) for j, ((kind, w0, c0), (_k, w1, c1))
                   in enumerate(zip(starts, starts[1:])) if epoch or j]   # the very first cycle warms up
            for kind, t in seq:
                per[kind].append(t)
            start = 1 if (not epoch and seq and seq[0][0] == "premade") else 0
            for (k0, t0), (k1, t1) in zip(seq[start::2], seq[start + 1::2]):
                if k0 != k1:
                    pairs.append((t0, t1) if k0 == "real" else (t1, t0))
            if min(len(v) for v in per.values()) >= steps:
                break
    finally:
        task.batch = real
    out = {"accumulate": acc}
    for kind, v in per.items():
        a = np.asarray(v)
        out[kind] = {"steps": len(a), "s_wall": float(np.median(a[:, 0])), "s_cpu": float(np.median(a[:, 1]))}
    pr = np.asarray(pairs)           # [P, 2 (real, premade), 2 (wall, cpu)]
    out["pair_ratio"] = {"pairs": len(pr), "wall": float(np.median(pr[:, 1, 0] / pr[:, 0, 0])),
                         "cpu": float(np.median(pr[:, 1, 1] / pr[:, 0, 1]))}
    return out


def head_rates(study: str, device, steps: int = 8, overrides=(), amp: bool = False) -> dict:
    """`steps` accumulation cycles of each kind (trainer's batches, pre-made batches) for one
    study, on a synthetic corpus sized so an epoch holds 2 x steps + 2 full cycles."""
    import torch

    from experiments import config, tasks, windows

    cfg = config.load(study, list(overrides))
    bs = cfg.train.batch_size
    frames = STUDIES[study]
    per_video = len(windows.window_starts(frames, cfg.data.window, cfg.data.hop)) if cfg.task == "frames" else 1
    acc = max(1, int(cfg.train.accumulate or 1))
    videos = max(2, -(-(2 * steps + 2) * acc * bs // per_video))
    torch.manual_seed(0)
    corpus = synthetic_corpus(cfg, videos, frames, device)
    roles = {"train": list(range(videos)), "val": [0], "test": [1]}
    task = tasks.make(cfg, corpus, roles, device)
    model = task.build_model().to(device)
    t = _step_times(task, model, cfg, device, steps, amp)
    clock = "s_wall" if device.type == "cuda" else "s_cpu"
    r, p = t["real"][clock], t["premade"][clock]
    pair = t["pair_ratio"]["wall" if device.type == "cuda" else "cpu"]
    return {"head": cfg.head.name, "batch_size": bs, "samples": task.n_samples("train"),
            "accumulate": t["accumulate"], "cycles_measured_each": min(t["real"]["steps"], t["premade"]["steps"]),
            "ms_per_step_data_path": round(1e3 * r, 2), "ms_per_step_premade": round(1e3 * p, 2),
            "ms_per_step_wall_data_path": round(1e3 * t["real"]["s_wall"], 2),
            "ms_per_step_wall_premade": round(1e3 * t["premade"]["s_wall"], 2),
            "steps_per_s_data_path": round(1 / r, 3), "steps_per_s_premade": round(1 / p, 3),
            f"ratio ({'wall' if clock == 's_wall' else 'CPU time'}, median of {t['pair_ratio']['pairs']} "
            "adjacent cycle pairs; target >= 0.9)": round(pair, 3),
            "ratio_of_medians": round(p / r, 3),
            "ratio_wall_pairs": round(t["pair_ratio"]["wall"], 3)}


def heads_section(a) -> dict:
    import torch

    res = {"about": f"optimizer steps/s of experiments.fit.train_epoch per published study config on a "
                    f"synthetic in-memory corpus, the trainer's Task.batch vs pre-made batches of the same "
                    f"samples (compute ceiling) swapped per accumulation cycle, median of {a.head_steps} cycles each; CPU fp32, torch threads "
                    "as in the header; the ratio in CPU time (load-proof), the wall ratio beside it"}
    for study in STUDIES:
        try:
            res[study] = head_rates(study, torch.device("cpu"), a.head_steps)
        except Exception as e:  # noqa: BLE001  (a benchmark reports, the others still run)
            res[study] = {"error": f"{type(e).__name__}: {e}"}
        print(f"[heads] {study}: {res[study]}", flush=True)
    return res


# ----------------------------------------------------------------------------- scale

def scale_section(a) -> dict:
    """abaw2 epoch on 1/scale_div of Aff-Wild2 (frames): store -> read_concat -> corpus (float16 kept, as
    load_corpus) -> train_epoch, with the resident memory of each stage (this process only)."""
    import torch

    from experiments import config, tasks
    from experiments.fit import keep_freed_memory, train_epoch
    from experiments.optim import make_optimizer
    from store import read_concat

    keep_freed_memory()
    frames_total = AFFWILD2_FRAMES // a.scale_div
    per_video = 3000
    videos = max(2, frames_total // per_video)
    dims = {"backbone": 512, "logmel": 64, "mfcc": 39}
    cfg = config.load("abaw2", ["train.batch_size=256"])
    res = {"about": f"1/{a.scale_div} of Aff-Wild2: {videos} videos x {per_video} frames = "
                    f"{videos * per_video} frames, {dims} float16 in the store; abaw2 lfan, batch 256, "
                    "CPU fp32 (the GPU figure, bf16, is in bench_gpu); memory: VmRSS / VmHWM per stage"}
    mem = res["memory_mb"] = {"after_imports": rss_now_mb()}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        t0 = time.perf_counter()
        keys = write_store(Path(tmp), videos, per_video, dims)
        res["write_store_s"] = round(time.perf_counter() - t0, 1)
        ids = [f"v{v:04d}" for v in range(videos)]
        mem["before_read (the bench's own store writing done)"] = rss_now_mb()
        mem["peak_until_read"] = peak_rss_mb()
        reset_peak_rss()
        t0 = time.perf_counter()
        cs = {n: read_concat(tmp, f"bench_{n}", k, ids) for n, k in keys.items()}
        corpus = corpus_from_store(cfg, cs)
        res["read_and_corpus_s"] = round(time.perf_counter() - t0, 2)
    feature_bytes = sum(c.arrays["data"].nbytes for c in cs.values())
    mem["peak_during_load (read + corpus)"] = peak_rss_mb()
    del cs
    mem["corpus_loaded (read arrays released)"] = rss_now_mb()
    task = tasks.make(cfg, corpus, {"train": list(range(videos)), "val": [0], "test": [1]}, torch.device("cpu"))
    model = task.build_model()
    opt = make_optimizer(cfg.optim, model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    mem["before_epoch"] = before = rss_now_mb()
    reset_peak_rss()
    t0, c0 = time.perf_counter(), time.process_time()
    train_epoch(task, model, opt, scaler, torch.Generator().manual_seed(0), cfg, torch.device("cpu"))
    res["epoch_s"] = round(time.perf_counter() - t0, 2)
    res["epoch_cpu_s"] = round(time.process_time() - c0, 2)     # what the machine's load does not inflate
    mem["peak_during_epoch"] = peak = peak_rss_mb()
    mem["epoch_working_set (peak - before: batch 256 activations, grads, optimizer)"] = round(peak - before, 1)
    res["windows"] = task.n_samples("train")
    res["steps"] = -(-res["windows"] // cfg.train.batch_size)
    res["windows_per_s"] = round(res["windows"] / res["epoch_s"], 1)
    res["feature_bytes_float16_mb"] = fb = round(feature_bytes / 1e6, 1)
    res["corpus_mb"] = cb = round(sum(m.x.nbytes for m in corpus.modalities.values()) / 1e6, 1)
    res["peak_rss_mb"] = max(mem["peak_until_read"], mem["peak_during_load (read + corpus)"], peak)
    res["ratio_peak_rss_to_feature_bytes"] = round(res["peak_rss_mb"] / fb, 2)
    # what grows with the corpus is its in-memory copy (float16: the feature bytes); imports and the
    # batch-256 working set do not: the same sum at full Aff-Wild2 size
    full_fb, full_cb = fb * a.scale_div, cb * a.scale_div
    fixed = mem["after_imports"] + mem["epoch_working_set (peak - before: batch 256 activations, grads, optimizer)"]
    res["full_size_estimate"] = {"feature_bytes_float16_mb": round(full_fb), "corpus_mb": round(full_cb),
                                 "training_rss_mb (imports + corpus + working set)": round(fixed + full_cb),
                                 "ratio_to_feature_bytes": round((fixed + full_cb) / full_fb, 2)}
    res["full_size_epoch_s_extrapolated_cpu"] = round(res["epoch_s"] * a.scale_div, 1)
    res["full_size_epoch_cpu_s_extrapolated"] = round(res["epoch_cpu_s"] * a.scale_div, 1)
    return res


def add_args(p) -> None:
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--head-steps", type=int, default=8, help="accumulation cycles measured per kind and head")
    p.add_argument("--rounds", type=int, default=5, help="windows: rounds of turns")
    p.add_argument("--burst", type=float, default=1.0, help="windows: seconds per method per turn")
    p.add_argument("--scale-div", type=int, default=20)
    p.add_argument("--no-scale", action="store_true")


def run(a) -> dict:
    import torch

    from experiments.fit import keep_freed_memory

    keep_freed_memory()          # as experiments.fit.run_fold does: every method below runs with it
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
