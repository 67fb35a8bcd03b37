"""`make bench-gpu`: every GPU figure in one go (a few minutes on one H100/H200).

Not measured yet: written on a machine without a GPU; run it where one is. Sections:
  heads     steps/s per study head on CUDA (the trainer's train_epoch, train.amp on: its fp16
            autocast + GradScaler) fed by the trainer's Task.batch vs pre-made batches of the
            same samples (ceiling), swapped per accumulation cycle, each batch synchronised
            (bench_train._step_times)
  windows   300-frame windows/s of FrameTask.batch on the device (synchronised per batch) in
            turns with the CPU methods of bench_train.windows_section
  abaw2_full  one abaw2 epoch at batch 256 on an Aff-Wild2-sized corpus on the device
            (2.8 M frames: 512 visual + 64 log-mel + 39 MFCC); target < 10 s
  backbone  a ResNet-50 (torchvision, or the registered ir50 when torchvision is absent;
            random weights from a local file, as the extractor requires) as the `backbone`
            extractor on 112x112 crops at batch 256, vs the same model's pure forward rate
Writes benchmarks/results/<date>-<sha>-gpu.json + .md. Exits 2 without CUDA.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, Results  # noqa: E402

import bench_train  # noqa: E402


def abaw2_full(device, frames_total: int, per_video: int = 3000) -> dict:
    import torch

    from experiments import config, tasks
    from experiments.fit import train_epoch
    from experiments.optim import make_optimizer

    cfg = config.load("abaw2", ["train.batch_size=256", "train.amp=true"])
    videos = frames_total // per_video
    t0 = time.perf_counter()
    corpus = bench_train.synthetic_corpus(cfg, videos, per_video, device)
    made = time.perf_counter() - t0
    task = tasks.make(cfg, corpus, {"train": list(range(videos)), "val": [0], "test": [1]}, device)
    model = task.build_model().to(device)
    opt = make_optimizer(cfg.optim, model.parameters())
    scaler = torch.amp.GradScaler("cuda", enabled=True)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(2):            # the first epoch includes cuDNN autotuning and allocator growth
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_epoch(task, model, opt, scaler, gen, cfg, device)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"frames": videos * per_video, "windows": task.n_samples("train"), "corpus_build_s": round(made, 1),
            "epoch_s_first": round(times[0], 2), "epoch_s (target < 10)": round(times[1], 2),
            "gpu_memory_peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2)}


def backbone(device, n: int = 4096, batch: int = 256) -> dict:
    import torch

    from featurize.backbone import ARCHS, Backbone, BackboneConfig

    try:
        import torchvision

        arch, model = "torchvision:resnet50", torchvision.models.resnet50()
    except ImportError:
        arch, model = "ir50", ARCHS.get("ir50")()
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(tmp) / "w.pt"
        torch.save(model.state_dict(), w)
        ex = Backbone(BackboneConfig(weights=str(w), arch=arch, batch=batch, device=str(device)))
        crops = np.random.default_rng(0).integers(0, 255, (n, 112, 112, 3), dtype=np.uint8)
        mask = np.ones(n, bool)
        ex.process(crops[:batch], {"mask": mask[:batch]})
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ex.process(crops, {"mask": mask})
        torch.cuda.synchronize()
        ext_rate = n / (time.perf_counter() - t0)
    net = model.to(device).eval()
    x = torch.randn(batch, 3, 112, 112, device=device)
    with torch.inference_mode():
        net(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n // batch):
            net(x)
        torch.cuda.synchronize()
    fwd = (n // batch) * batch / (time.perf_counter() - t0)
    return {"arch": arch, "batch": batch, "crops": n, "extractor_crops_per_s": round(ext_rate, 1),
            "pure_forward_crops_per_s": round(fwd, 1), "ratio_extractor_vs_forward": round(ext_rate / fwd, 3)}


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=bench_train.AFFWILD2_FRAMES)
    p.add_argument("--head-steps", type=int, default=16)
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a, _ = p.parse_known_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here — run it on a GPU machine (make bench-gpu)", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    res = Results("gpu")
    parts = {
        "heads": lambda: {s: bench_train.head_rates(s, dev, a.head_steps, amp=True) for s in bench_train.STUDIES},
        "windows": lambda: bench_train.windows_section(argparse.Namespace(videos=a.videos, frames=3000, rounds=3, burst=1.0)),
        "abaw2_full": lambda: abaw2_full(dev, a.frames),
        "backbone": lambda: backbone(dev),
    }
    for name, fn in parts.items():
        try:
            res[name] = fn()
        except Exception as e:  # noqa: BLE001  (report it, run the rest)
            res[name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"[gpu] {name}: {res[name]}", flush=True)
        res.write(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
