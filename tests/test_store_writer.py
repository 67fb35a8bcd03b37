"""The writer: streaming, atomic commits, crash recovery and concurrent manifest appends."""
import hashlib
import json
import multiprocessing as mp
import os
import tracemalloc
import warnings

import numpy as np
import pytest

from store import FeatureStore, InputError, make_key, manifest_rows, read_concat, read_video
from store.reader import read_jsonl
from store.verify import verify
from store.writer import CHUNK_KEY_ENCODING, append_jsonl, compressor_for

EXT = "feat"


def provenance(**params):
    params = params or {"dim": 4}
    libs = {"numpy": "2"}
    return {"extractor": EXT, "version": "1", "params": params, "weights_sha256": None, "libraries": libs}


def open_key(root, **params):
    prov = provenance(**params)
    return FeatureStore(root).key(EXT, make_key("1", prov["params"], None, prov["libraries"]), prov)


def frames(lo, n, dim=4):
    t = np.arange(lo, lo + n, dtype=np.float64) / 25.0
    data = (np.arange(lo, lo + n)[:, None] + np.arange(dim)[None, :]).astype(np.float16)
    return {"data": data, "mask": (np.arange(lo, lo + n) % 3 != 0), "t": t}


def write_video(handle, vid, total, batch=37, chunk=64, **manifest):
    with handle.begin_video(vid, original_id=f"raw {vid}", chunk_frames=chunk) as w:
        for lo in range(0, total, batch):
            w.append(frames(lo, min(batch, total - lo)))
        w.attrs["fps"] = 25.0
        return w.commit(manifest or None)


def tree_digest(path):
    """Every file's bytes under a folder: shows that nothing in it changed."""
    out = {}
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
    return out


# --- streaming --------------------------------------------------------------------------------

def test_streamed_video_reads_back_exactly_with_time_chunks(tmp_path):
    handle = open_key(tmp_path)
    line = write_video(handle, "v1", 300, batch=37, chunk=64)
    assert line["frames"] == 300 and line["original_id"] == "raw v1"
    assert line["arrays"] == {"data": [[300, 4], "float16"], "mask": [[300], "bool"], "t": [[300], "float64"]}
    arrays, attrs = read_video(tmp_path, EXT, handle.key, "v1")
    expected = frames(0, 300)
    for name in expected:
        np.testing.assert_array_equal(arrays[name], expected[name])
        assert arrays[name].dtype == expected[name].dtype
    assert attrs == {"original_id": "raw v1", "fps": 25.0}
    # chunked on time (trailing dims whole): ceil(300 / 64) = 5 chunk files per array
    chunk_files = sorted(f for f in os.listdir(handle.path / "v1" / "data") if f != "zarr.json")
    assert chunk_files == ["c.0.0", "c.1.0", "c.2.0", "c.3.0", "c.4.0"]


def test_files_are_byte_for_byte_what_zarr_itself_writes(tmp_path):
    """The writer encodes chunks and metadata itself (no zarr call per video): every file must
    be the very bytes zarr writes for the same arrays, so any zarr reader sees a zarr group."""
    import zarr

    rng = np.random.default_rng(0)
    n, chunk = 150, 64           # two whole chunks and a padded tail
    arrays = {"data": rng.normal(size=(n, 5)).astype(np.float16), "mask": rng.random(n) > 0.3,
              "t": np.arange(n) / 25.0, "crops": rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8),
              "frame": np.arange(n, dtype=np.int64)}
    attrs = {"original_id": "v", "fps": 25.0, "nested": {"a": [1, 2]}}
    handle = open_key(tmp_path / "ours")
    with handle.begin_video("v", chunk_frames=chunk) as w:
        for lo in (0, 10, 70, 128, 140):
            hi = {0: 10, 10: 70, 70: 128, 128: 140, 140: n}[lo]
            w.append({k: a[lo:hi] for k, a in arrays.items()})
        w.attrs.update({k: v for k, v in attrs.items() if k != "original_id"})
        w.commit()
    g = zarr.create_group(store=str(tmp_path / "zarr"), zarr_format=3, attributes=attrs)
    for name, a in arrays.items():
        z = g.create_array(name, shape=a.shape, chunks=(chunk,) + a.shape[1:], dtype=a.dtype,
                           config={"write_empty_chunks": True}, chunk_key_encoding=CHUNK_KEY_ENCODING,
                           compressors=compressor_for(a.dtype, a.shape[1:]))
        z[:] = a
    assert tree_digest(handle.path / "v") == tree_digest(tmp_path / "zarr")
    levels = {n: json.loads((handle.path / "v" / n / "zarr.json").read_text())["codecs"][1]["configuration"]["level"]
              for n in arrays}
    assert levels == {"data": 0, "mask": 0, "t": 0, "crops": 1, "frame": 0}   # images at zstd 1
    back = zarr.open_group(str(handle.path / "v"), mode="r")
    assert dict(back.attrs) == attrs
    for name, a in arrays.items():
        np.testing.assert_array_equal(back[name][:], a)


def test_memory_stays_bounded_by_one_chunk_not_the_video(tmp_path):
    handle = open_key(tmp_path)
    crop = np.full((100, 32, 32, 3), 7, dtype=np.uint8)  # 100 frames of 32x32 RGB = 300 KiB
    total_bytes = 200 * crop.nbytes  # 60 MiB video
    with handle.begin_video("long", chunk_frames=256) as w:
        tracemalloc.start()
        for i in range(200):
            w.append({"data": crop, "mask": np.ones(100, bool), "t": np.arange(i * 100, i * 100 + 100) / 25.0})
            assert w._fill < 256  # never more than one chunk waits in RAM
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        w.commit()
    assert peak < total_bytes / 4, f"peak {peak / 2**20:.1f} MiB for a {total_bytes / 2**20:.0f} MiB video"
    arrays, _ = read_video(tmp_path, EXT, handle.key, "long", arrays=["data"])
    assert arrays["data"].shape == (20000, 32, 32, 3) and int(arrays["data"][-1].max()) == 7


def test_dtype_is_fixed_by_first_append_and_later_batches_are_cast(tmp_path):
    handle = open_key(tmp_path)
    with handle.begin_video("v", chunk_frames=8) as w:
        w.append({"data": np.zeros((3, 2), np.float16), "mask": np.ones(3, bool), "t": np.arange(3.0)})
        w.append({"data": np.full((5, 2), 1.5, np.float32), "mask": np.ones(5, bool), "t": np.arange(3.0, 8.0)})
        with pytest.raises(ValueError, match="trailing shape"):
            w.append({"data": np.zeros((1, 3), np.float16), "mask": np.ones(1, bool), "t": np.zeros(1)})
        with pytest.raises(ValueError, match="first append had"):
            w.append({"data": np.zeros((1, 2), np.float16), "t": np.zeros(1)})
        with pytest.raises(ValueError, match="length"):
            w.append({"data": np.zeros((2, 2), np.float16), "mask": np.ones(1, bool), "t": np.zeros(1)})
        with pytest.raises(ValueError, match="cannot become"):
            w.append({"data": np.zeros((1, 2), np.float16), "mask": np.ones(1, bool), "t": np.array(["x"])})
        w.commit()
    arrays, _ = read_video(tmp_path, EXT, handle.key, "v")
    assert arrays["data"].dtype == np.float16 and arrays["data"].shape == (8, 2)
    assert float(arrays["data"][-1, 0]) == 1.5


def test_zero_frame_video_commits_with_empty_arrays(tmp_path):
    handle = open_key(tmp_path)
    with handle.begin_video("empty") as w:
        w.append(frames(0, 0))
        w.append(frames(0, 0))
        line = w.commit()
    assert line["frames"] == 0 and line["arrays"]["data"] == [[0, 4], "float16"]
    arrays, _ = read_video(tmp_path, EXT, handle.key, "empty")
    assert arrays["data"].shape == (0, 4) and arrays["mask"].dtype == bool
    assert handle.status("empty") == "done"
    assert verify(tmp_path) == []


def test_nothing_appended_is_a_clear_error_and_leaves_nothing(tmp_path):
    handle = open_key(tmp_path)
    with pytest.raises(ValueError, match="nothing was appended"):
        with handle.begin_video("ghost") as w:
            w.commit()
    assert sorted(p.name for p in handle.path.iterdir()) == ["extractor.json"]
    assert handle.status("ghost") is None


def test_manifest_extras_are_recorded_but_cannot_override_core_fields(tmp_path):
    handle = open_key(tmp_path)
    line = write_video(handle, "v", 10, input_size=1234, input_mtime=5.5)
    assert manifest_rows(tmp_path, EXT, handle.key) == [line]
    assert line["input_size"] == 1234 and isinstance(line["seconds"], float)
    with handle.begin_video("w") as w:
        w.append(frames(0, 3))
        with pytest.raises(ValueError, match="frames"):
            w.commit({"frames": 99})


def test_exception_inside_the_writer_aborts_cleanly(tmp_path):
    handle = open_key(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with handle.begin_video("v", chunk_frames=4) as w:
            w.append(frames(0, 10))
            raise RuntimeError("boom")
    assert sorted(p.name for p in handle.path.iterdir()) == ["extractor.json"]
    assert handle.status("v") is None


# --- atomicity and crashes --------------------------------------------------------------------

def test_a_video_in_progress_is_invisible_to_readers(tmp_path):
    handle = open_key(tmp_path)
    write_video(handle, "done1", 20)
    with handle.begin_video("busy", chunk_frames=8) as w:
        w.append(frames(0, 30))  # three whole chunks already on disk
        assert w.temp.name.startswith(".tmp-busy-") and w.temp.is_dir()
        assert [r["video_id"] for r in manifest_rows(tmp_path, EXT, handle.key)] == ["done1"]
        with pytest.raises(InputError) as err:
            read_video(tmp_path, EXT, handle.key, "busy")
        assert err.value.reason == "missing_video"
        with pytest.raises(InputError):
            read_concat(tmp_path, EXT, handle.key, ["done1", "busy"])
        w.commit()
    assert handle.done_ids() == {"done1", "busy"}


def _crash_before_commit(root, key_params):
    handle = open_key(root, **key_params)
    w = handle.begin_video("v", chunk_frames=16)
    w.append(frames(0, 100))
    os._exit(3)  # the process dies: no commit, no cleanup


def _crash_after_rename(root, key_params):
    handle = open_key(root, **key_params)
    handle._announce = lambda row: os._exit(4)  # dies between rename and the manifest line
    write_video(handle, "v", 50)


def _run_child(target, *args):
    proc = mp.get_context("spawn").Process(target=target, args=args)
    proc.start()
    proc.join(60)
    return proc.exitcode


def test_crash_before_commit_leaves_only_a_temp_folder_and_a_rerun_rewrites(tmp_path):
    assert _run_child(_crash_before_commit, str(tmp_path), {"dim": 4}) == 3
    handle = open_key(tmp_path)
    temps = [p.name for p in handle.path.iterdir() if p.name.startswith(".tmp-v-")]
    assert len(temps) == 1 and (handle.path / temps[0] / "data").is_dir()
    assert manifest_rows(tmp_path, EXT, handle.key) == [] and handle.status("v") is None
    problems = verify(tmp_path)  # the temp folder, and the dead writer's claim
    assert len(problems) == 2 and all(p.startswith("warning:") for p in problems)
    assert any(temps[0] in p for p in problems) and any("writer is gone" in p for p in problems)
    write_video(handle, "v", 40)
    assert not any(p.name.startswith(".tmp-") for p in handle.path.iterdir())
    np.testing.assert_array_equal(read_video(tmp_path, EXT, handle.key, "v")[0]["t"], frames(0, 40)["t"])
    assert verify(tmp_path) == []


def test_crash_between_rename_and_manifest_is_unfinished_and_rewritten(tmp_path):
    assert _run_child(_crash_after_rename, str(tmp_path), {"dim": 4}) == 4
    handle = open_key(tmp_path)
    assert (handle.path / "v").is_dir()  # renamed into place ...
    assert handle.status("v") is None  # ... but not done
    with pytest.raises(InputError):
        read_video(tmp_path, EXT, handle.key, "v")
    assert any("without a manifest line" in p and not p.startswith("warning:") for p in verify(tmp_path))
    write_video(handle, "v", 12)
    assert read_video(tmp_path, EXT, handle.key, "v")[0]["data"].shape == (12, 4)
    assert verify(tmp_path) == []


def test_begin_video_never_touches_a_done_video(tmp_path):
    handle = open_key(tmp_path)
    write_video(handle, "v", 20)
    before = tree_digest(handle.path / "v")
    with pytest.raises(FileExistsError, match="already done"):
        handle.begin_video("v")
    assert tree_digest(handle.path / "v") == before


def test_stale_temps_of_other_videos_with_a_shared_prefix_survive(tmp_path):
    handle = open_key(tmp_path)
    other = handle.begin_video("a-b")  # its temp is .tmp-a-b-<uuid8>, which also starts with .tmp-a-
    other.append(frames(0, 5))
    write_video(handle, "a", 5)
    assert other.temp.is_dir()
    other.commit()
    assert handle.done_ids() == {"a", "a-b"}


def test_torn_manifest_line_is_skipped_and_the_next_line_survives(tmp_path):
    handle = open_key(tmp_path)
    write_video(handle, "v1", 5)
    with open(handle.path / "manifest.jsonl", "ab") as fh:
        fh.write(b'{"video_id": "v2", "fra')  # the process died mid-append
    with pytest.warns(UserWarning, match="torn"):
        assert [r["video_id"] for r in manifest_rows(tmp_path, EXT, handle.key)] == ["v1"]
    write_video(handle, "v3", 5)  # appends after the torn fragment (it reads the manifest only
    # when the video's folder exists: a line never precedes the rename)
    with pytest.warns(UserWarning, match="torn"):
        ids = [r["video_id"] for r in manifest_rows(tmp_path, EXT, handle.key)]
    assert ids == ["v1", "v3"]


# --- concurrency ------------------------------------------------------------------------------

def _hammer(root, worker, n_videos, n_lines):
    handle = open_key(root)
    for i in range(n_videos):
        write_video(handle, f"w{worker}-{i}", 20, chunk=8)
        handle.record_error(f"e{worker}-{i}", "decode_error", "x" * 5000)
    pad = "y" * 20000  # lines far longer than one pipe buffer
    for i in range(n_lines):
        append_jsonl(handle.path / "stress.jsonl", {"worker": worker, "i": i, "pad": pad})


def test_two_processes_append_to_one_key_without_torn_or_lost_lines(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w, 10, 300)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    handle = open_key(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any unreadable line fails the test
        rows = manifest_rows(tmp_path, EXT, handle.key)
        stress = read_jsonl(handle.path / "stress.jsonl")
        errors = read_jsonl(handle.path / "errors.jsonl")
    assert sorted(r["video_id"] for r in rows) == sorted(f"w{w}-{i}" for w in range(2) for i in range(10))
    assert len(errors) == 20
    assert sorted((r["worker"], r["i"]) for r in stress) == [(w, i) for w in range(2) for i in range(300)]
    assert (handle.path / "stress.jsonl").read_bytes().count(b"\n") == 600
    assert verify(tmp_path) == []


# --- keys, errors, datasets -------------------------------------------------------------------

def test_reopening_a_key_with_other_provenance_is_a_key_conflict(tmp_path):
    handle = open_key(tmp_path)
    prov = provenance()
    assert FeatureStore(tmp_path).key(EXT, handle.key, json.loads(json.dumps(prov))).path == handle.path
    with pytest.raises(InputError) as err:
        FeatureStore(tmp_path).key(EXT, handle.key, {**prov, "note": "made elsewhere"})
    assert err.value.reason == "key_conflict"
    with pytest.raises(ValueError, match="hashes to"):
        FeatureStore(tmp_path).key(EXT, "1-00000000", prov)


def test_changed_params_make_a_new_key_and_leave_the_old_one_untouched(tmp_path):
    old = open_key(tmp_path, dim=4)
    write_video(old, "v", 30)
    before = tree_digest(old.path)
    new = open_key(tmp_path, dim=8)
    assert new.key != old.key and new.path != old.path
    assert new.status("v") is None
    write_video(new, "v", 60)
    assert tree_digest(old.path) == before
    assert read_video(tmp_path, EXT, old.key, "v")[0]["t"].shape == (30,)


def test_errors_and_status(tmp_path):
    handle = open_key(tmp_path)
    handle.record_error("a", "decode_error", "bad packet", original_id="A raw")
    handle.record_error("wav", "no_video_stream", "audio only")
    assert handle.status("a") == "failed" and handle.status("wav") == "not_applicable"
    assert handle.status("nobody") is None
    write_video(handle, "a", 5)  # a retry that works
    assert handle.status("a") == "done"
    rows = read_jsonl(handle.path / "errors.jsonl")
    assert rows[0]["original_id"] == "A raw" and rows[0]["not_applicable"] is False
    assert rows[1]["not_applicable"] is True and rows[1]["time"]


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "", "manifest.jsonl", "a..b"])
def test_unsafe_video_ids_are_refused(tmp_path, bad):
    handle = open_key(tmp_path)
    with pytest.raises(InputError) as err:
        handle.begin_video(bad)
    assert err.value.reason == "bad_id"


def test_dataset_manifest_round_trip_is_an_atomic_replace(tmp_path):
    store = FeatureStore(tmp_path)
    rows = [{"video_id": "a", "labels": {"emotion": "happy"}, "fold": None}, {"video_id": "b", "split": "test"}]
    path = store.write_dataset_manifest("demo", rows)
    assert store.read_dataset_manifest("demo") == rows
    store.write_dataset_manifest("demo", rows[:1])
    assert store.read_dataset_manifest("demo") == rows[:1]
    assert sorted(os.listdir(path.parent)) == ["manifest.jsonl"]
    with pytest.raises(InputError) as err:
        store.read_dataset_manifest("nope")
    assert err.value.reason == "missing_file"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    """The one atomic-write helper (folds, JSON, checkpoints go through it): a writer that
    fails half-way leaves the previous bytes and no temp beside them."""
    import torch

    from store.writer import atomic_write

    path = tmp_path / "weights.pt"
    atomic_write(path, lambda fh: torch.save({"w": torch.arange(3)}, fh), binary=True)
    before = path.read_bytes()

    def half(fh):
        fh.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, half, binary=True)
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["w"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]
