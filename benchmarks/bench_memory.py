"""Peak RSS of one featurize worker: a 10-minute vs a 1-minute 1280x720 video it generates.

Each video is featurized (decode+faces+fer+logmel+mfcc, the pipeline's featurize_video, as a
worker runs it) in a fresh interpreter; the figure is its peak resident set while it works on
the video (VmHWM reset after the models are loaded: loading them peaks above any video, so
ru_maxrss read 1,743.8 MB for both lengths and could not show growth). Frames stream in
batches; the audio is decoded whole (16 kHz float32: 38 MB for 10 minutes, ~96 MB at the
end of read_audio's concatenation), the part that still grows with length. Its STFT used to
as well (librosa held 96 + 48 + 48 MB for 10 minutes: ratio 1.251, 2026-12-02-5ee1199);
featurize/audio.py mel_power now works in 41 s blocks: 1.065 (2026-12-02-2e290c3). --fps keeps the generated video cheap to encode (frames
stream whatever their number; the length in seconds is what audio memory follows).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import isolated, peak_rss_mb, reset_peak_rss, rss_now_mb, script_main  # noqa: E402

MAIN = ["faces", "fer", "logmel", "mfcc"]


def make_video(path: Path, minutes: float, fps: int, size=(1280, 720)) -> None:
    from featurize.demo import draw_face, encode_mp4

    w, h = size
    n = int(minutes * 60 * fps)
    sr = 16000
    rng = np.random.default_rng(0)
    audio = (0.05 * rng.standard_normal(int(minutes * 60 * sr))).astype(np.float32)
    bg = np.full((h, w, 3), 180, np.uint8)

    def frame(i):
        img = bg.copy()
        return draw_face(img, np.sin(i / 50), np.cos(i / 70), cx=w / 2 + 100 * np.sin(i / 90), cy=h / 2,
                         scale=1.0)

    encode_mp4(path, frame, n, fps, size, audio, sr)


def worker(path: str) -> dict:
    """featurize_video on one file, in this process; its peak RSS."""
    from featurize import datasets
    from featurize.pipeline import _load_models, featurize_video, plan_extractors, prepare_rows

    specs = plan_extractors(MAIN)
    _load_models(specs)
    rss_models = peak_rss_mb()
    row = prepare_rows([datasets.make_row(Path(path).stem, path, "bench")])[0][0]
    store = tempfile.mkdtemp(prefix="bench-mem-store-")
    before = rss_now_mb()
    reset_peak_rss()          # the peak of loading the models (a transient) is not the video's
    t0 = time.perf_counter()
    out = featurize_video(row, specs, store)
    during = peak_rss_mb()
    bad = [r for r in out if r["status"] != "done"]
    if bad:
        raise RuntimeError(f"featurize failed: {bad}")
    import shutil

    shutil.rmtree(store, ignore_errors=True)
    return {"frames": max(int(r.get("decoded_frames") or 0) for r in out), "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_after_model_load_mb": rss_models, "rss_before_video_mb": before,
            "peak_rss_during_video_mb": during, "growth_during_video_mb": round(during - before, 1),
            "peak_rss_mb": max(rss_models, during)}


def add_args(p) -> None:
    p.add_argument("--minutes", default="1,10")
    p.add_argument("--fps", type=int, default=5)


def run(a) -> dict:
    mins = [float(m) for m in a.minutes.split(",")]
    res = {"about": f"one featurize worker ({'+'.join(MAIN)}), 1280x720 H.264 at {a.fps} fps with audio, "
                    "generated; peak RSS of a fresh process per video"}
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        for m in mins:
            p = Path(tmp) / f"v{m:g}min.mp4"
            t0 = time.perf_counter()
            make_video(p, m, a.fps)
            enc = round(time.perf_counter() - t0, 1)
            res[f"{m:g}_min"] = {"encode_s": enc, **isolated(__file__, ["--only", "worker", "--path", str(p)])}
            print(f"[memory] {m:g} min: {res[f'{m:g}_min']}", flush=True)
    lo, hi = res[f"{min(mins):g}_min"], res[f"{max(mins):g}_min"]
    if "peak_rss_during_video_mb" in lo and "peak_rss_during_video_mb" in hi:
        # the worker's resident set while it works on the video (models included): model loading's
        # own transient peak (ru_maxrss) was above both before and hid any growth (ratio 1.0 flat)
        res[f"ratio_{max(mins):g}_vs_{min(mins):g}_min (target <= 1.25)"] = round(
            hi["peak_rss_during_video_mb"] / lo["peak_rss_during_video_mb"], 3)
        res[f"ratio_{max(mins):g}_vs_{min(mins):g}_min_growth_over_models"] = round(
            hi["growth_during_video_mb"] / max(lo["growth_during_video_mb"], 1e-3), 2)
    return {"memory": res}


def main(argv=None) -> int:
    return script_main("memory", __doc__, add_args, run, argv, only={"worker": lambda a: worker(a.path)})


if __name__ == "__main__":
    sys.exit(main())
