"""A synthetic audio-visual corpus with known per-frame valence/arousal.

Why: every part of emocache (decode, faces, mesh, fer, audio, the Dask pipeline, the
trainers) can then be run end to end on a fresh clone, without third-party data. The videos
are real H.264 + AAC mp4 files (encoded with PyAV), so the decode path is the real one.

The face is a cartoon drawn with OpenCV primitives. Valence bends the mouth (smile / frown);
arousal opens the eyes and lifts the brows. The voice is a harmonic tone whose pitch and
loudness follow arousal. Each clip's trajectories wander smoothly around a per-clip offset
whose quadrant (sign of valence, sign of arousal) is balanced over the corpus, so a trainer
can derive per-frame regression targets and a per-clip 4-class target from the same labels.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GENERATOR_VERSION = "1"
QUADRANTS = ("pos_high", "neg_high", "neg_low", "pos_low")   # (valence sign, arousal sign)
_QUADRANT_SIGNS = {"pos_high": (1, 1), "neg_high": (-1, 1), "neg_low": (-1, -1), "pos_low": (1, -1)}


def quadrant_of(valence: float, arousal: float) -> str:
    """The quadrant name of a (valence, arousal) point; 0 counts as positive."""
    if valence >= 0:
        return "pos_high" if arousal >= 0 else "pos_low"
    return "neg_high" if arousal >= 0 else "neg_low"


@dataclass(frozen=True)
class DemoParams:
    n: int = 16
    seconds: float = 20.0
    fps: int = 25
    size: tuple = (640, 360)
    seed: int = 0
    sample_rate: int = 16000


def _trajectory(rng: np.random.Generator, t: np.ndarray, offset: float) -> np.ndarray:
    """Smooth wandering around `offset`: three slow sinusoids (amplitudes sum to <= 0.35)."""
    out = np.full_like(t, offset)
    amps = rng.dirichlet(np.ones(3)) * rng.uniform(0.2, 0.35)
    for amp in amps:
        freq = rng.uniform(0.02, 0.25)
        phase = rng.uniform(0, 2 * math.pi)
        out += amp * np.sin(2 * math.pi * freq * t + phase)
    return np.clip(out, -1.0, 1.0)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A plain-ish background: a soft vertical gradient between two muted colours."""
    top = rng.uniform(150, 230, size=3)
    bottom = top * rng.uniform(0.6, 0.9)
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = top[None, None, :] * (1 - ramp) + bottom[None, None, :] * ramp
    return np.broadcast_to(img, (h, w, 3)).astype(np.uint8).copy()


def draw_face(canvas: np.ndarray, valence: float, arousal: float, cx: float, cy: float,
              scale: float, skin=(224, 182, 150), hair=(60, 40, 30)) -> np.ndarray:
    """Draw the cartoon face in place (RGB canvas) and return it.

    Mouth curvature follows valence (smile > 0, frown < 0); eye opening and brow height
    follow arousal. Sizes are relative to the frame height so any resolution works.
    """
    import cv2

    h = canvas.shape[0]
    s = scale * h / 360.0
    aa = cv2.LINE_AA

    def p(x, y):
        return (int(round(cx + x * s)), int(round(cy + y * s)))

    def r(v):
        return max(1, int(round(v * s)))

    # shoulders and neck first, then hair behind the face, then the face on top
    cv2.ellipse(canvas, p(0, 175), (r(150), r(70)), 0, 0, 360, (70, 90, 120), -1, aa)
    cv2.rectangle(canvas, p(-28, 80), p(28, 130), skin, -1, aa)
    cv2.ellipse(canvas, p(0, -18), (r(84), r(104)), 0, 0, 360, hair, -1, aa)
    cv2.ellipse(canvas, p(0, 0), (r(74), r(96)), 0, 0, 360, skin, -1, aa)
    cv2.ellipse(canvas, p(0, -62), (r(74), r(40)), 0, 180, 360, hair, -1, aa)    # fringe
    cv2.ellipse(canvas, p(-74, 5), (r(9), r(18)), 0, 0, 360, skin, -1, aa)        # ears
    cv2.ellipse(canvas, p(74, 5), (r(9), r(18)), 0, 0, 360, skin, -1, aa)

    eye_open = 5.0 + 4.0 * (arousal + 1.0)            # 5..13 px half-height at 360p
    brow_lift = 6.0 * arousal
    for side in (-1, 1):
        ex, ey = 28 * side, -14
        cv2.ellipse(canvas, p(ex, ey), (r(15), r(eye_open)), 0, 0, 360, (250, 250, 250), -1, aa)
        cv2.ellipse(canvas, p(ex, ey), (r(15), r(eye_open)), 0, 0, 360, (40, 30, 30), 1, aa)
        cv2.circle(canvas, p(ex, ey), r(min(6.0, eye_open)), (45, 35, 30), -1, aa)
        cv2.circle(canvas, p(ex + 2, ey - 2), r(1.5), (255, 255, 255), -1, aa)
        by = ey - 20 - brow_lift
        droop = -2.0 * arousal                         # low arousal: inner ends droop a bit
        cv2.line(canvas, p(ex - 15 * side, by + droop), p(ex + 15 * side, by), hair, r(3), aa)
    cv2.line(canvas, p(0, -8), p(-5, 22), (170, 120, 100), r(2), aa)            # nose
    cv2.line(canvas, p(-5, 22), p(4, 24), (170, 120, 100), r(2), aa)

    xs = np.linspace(-26, 26, 21)
    ys = 48 + valence * 12.0 * (1 - (xs / 26.0) ** 2) - valence * 4.0
    pts = np.stack([cx + xs * s, cy + ys * s], axis=1).round().astype(np.int32)
    cv2.polylines(canvas, [pts], False, (150, 50, 50), r(3), aa)
    return canvas


def _voice(rng: np.random.Generator, arousal_at, seconds: float, sr: int) -> np.ndarray:
    """A voiced harmonic tone: pitch 110..190 Hz and loudness follow arousal; syllable-like
    4 Hz amplitude envelope; a little noise. float32 mono in [-1, 1]."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    a = arousal_at(t)
    f0 = 150.0 + 40.0 * a + 3.0 * np.sin(2 * math.pi * 5.0 * t)
    phase = 2 * math.pi * np.cumsum(f0) / sr
    tone = np.zeros(n)
    for k in range(1, 9):
        tone += np.sin(k * phase) / k
    syll = 0.55 + 0.45 * np.sin(2 * math.pi * rng.uniform(3.0, 5.0) * t + rng.uniform(0, 6.28))
    loud = 0.06 + 0.05 * (a + 1.0)
    audio = loud * syll * tone / 2.0 + 0.004 * rng.standard_normal(n)
    return np.clip(audio, -1, 1).astype(np.float32)


def encode_mp4(path: Path, frames_fn, n_frames: int, fps: int, size, audio: np.ndarray, sr: int):
    """Write H.264 (yuv420p) + AAC mono into an mp4, interleaving by time."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23", "threads": "1"}
        ast = out.add_stream("aac", rate=sr)
        ast.layout = "mono"
        chunk = 1024
        a_pos = 0
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frames_fn(i), format="rgb24")
            frame.pts = i
            for pkt in vs.encode(frame):
                out.mux(pkt)
            upto = min(len(audio), int(round((i + 1) / fps * sr)))
            while a_pos + chunk <= upto or (i == n_frames - 1 and a_pos < len(audio)):
                block = audio[a_pos:a_pos + chunk]
                af = av.AudioFrame.from_ndarray(block[None, :], format="fltp", layout="mono")
                af.sample_rate = sr
                af.pts = a_pos
                for pkt in ast.encode(af):
                    out.mux(pkt)
                a_pos += len(block)
        for pkt in vs.encode(None):
            out.mux(pkt)
        for pkt in ast.encode(None):
            out.mux(pkt)


def write_demo_clip(out_dir: Path, index: int, params: DemoParams, quadrant: str,
                    rng: np.random.Generator) -> dict:
    """One clip: video, per-frame label CSV; returns its corpus.json entry."""
    w, h = params.size
    fps = params.fps
    n_frames = int(round(params.seconds * fps))
    t = np.arange(n_frames) / fps
    sv, sa = _QUADRANT_SIGNS[quadrant]
    valence = _trajectory(rng, t, sv * rng.uniform(0.4, 0.6))
    arousal = _trajectory(rng, t, sa * rng.uniform(0.4, 0.6))

    bg = _background(rng, w, h)
    skin = tuple(int(c) for c in rng.uniform([205, 160, 120], [240, 200, 170]))
    hair = tuple(int(c) for c in rng.uniform([20, 15, 10], [110, 80, 60]))
    ph = rng.uniform(0, 2 * math.pi, size=3)
    cx0, cy0 = w / 2 + rng.uniform(-0.08, 0.08) * w, h / 2 - 0.03 * h

    def frame(i: int) -> np.ndarray:
        tt = t[i]
        cx = cx0 + 0.015 * w * math.sin(2 * math.pi * 0.13 * tt + ph[0])
        cy = cy0 + 0.012 * h * math.sin(2 * math.pi * 0.21 * tt + ph[1])
        scale = 1.0 + 0.04 * math.sin(2 * math.pi * 0.17 * tt + ph[2])
        return draw_face(bg.copy(), valence[i], arousal[i], cx, cy, scale, skin, hair)

    audio = _voice(rng, lambda ts: np.interp(ts, t, arousal), params.seconds, params.sample_rate)

    name = f"demo_{index:02d}"
    video = out_dir / "videos" / f"{name}.mp4"
    labels = out_dir / "labels" / f"{name}.csv"
    encode_mp4(video, frame, n_frames, fps, params.size, audio, params.sample_rate)
    with open(labels, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["frame", "t", "valence", "arousal"])
        for i in range(n_frames):
            wr.writerow([i, f"{t[i]:.4f}", f"{valence[i]:.4f}", f"{arousal[i]:.4f}"])
    vm, am = float(valence.mean()), float(arousal.mean())
    return {"id": name, "video": f"videos/{name}.mp4", "labels": f"labels/{name}.csv",
            "frames": n_frames, "valence_mean": round(vm, 4), "arousal_mean": round(am, 4),
            "quadrant": quadrant_of(vm, am)}


def write_demo_corpus(out_dir, n: int = 16, seconds: float = 20.0, fps: int = 25,
                      size=(640, 360), seed: int = 0, sample_rate: int = 16000) -> Path:
    """Write `n` clips to `out_dir` (videos/, labels/, corpus.json); returns corpus.json's path.

    Deterministic given the arguments. Quadrants are balanced in blocks of four; the last
    block is the validation split (one clip per quadrant) when n >= 8.
    """
    out_dir = Path(out_dir)
    if n < 1 or seconds <= 0 or fps <= 0:
        raise ValueError(f"write_demo_corpus: need n >= 1, seconds > 0, fps > 0 (got {n}, {seconds}, {fps})")
    w, h = (int(v) for v in size)
    if w % 2 or h % 2:
        raise ValueError(f"write_demo_corpus: H.264 yuv420p needs even width/height, got {w}x{h}")
    params = DemoParams(n=n, seconds=float(seconds), fps=int(fps), size=(w, h), seed=seed,
                        sample_rate=sample_rate)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    master = np.random.default_rng(seed)
    n_blocks = math.ceil(n / 4)
    order = [q for _ in range(n_blocks) for q in master.permutation(QUADRANTS)][:n]
    clip_seeds = master.integers(0, 2**31 - 1, size=n)
    clips = []
    for i in range(n):
        entry = write_demo_clip(out_dir, i, params, str(order[i]), np.random.default_rng(clip_seeds[i]))
        entry["split"] = "val" if (n >= 8 and i // 4 == n_blocks - 1) else "train"
        clips.append(entry)
    meta = {"generator": "emocache.featurize.demo", "generator_version": GENERATOR_VERSION,
            "params": {**asdict(params), "size": [w, h]},
            "label_columns": ["valence", "arousal"], "label_range": [-1.0, 1.0],
            "clips": clips}
    from store.writer import atomic_write_text

    path = out_dir / "corpus.json"
    atomic_write_text(path, json.dumps(meta, indent=1))
    return path
