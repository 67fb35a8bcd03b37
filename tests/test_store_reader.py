"""Readers: whole videos, the contiguous training path, key resolution and listings."""

import numpy as np
import pytest

from store import (Concat, FeatureStore, InputError, error_rows, list_keys, make_key, manifest_rows, read_concat,
                   read_video, stored_key)

EXT = "feat"


def open_key(root, extractor=EXT, **params):
    params = params or {"dim": 3}
    prov = {"version": "2", "params": params, "weights_sha256": "0" * 64, "libraries": {"zarr": "3.1.6"}}
    return FeatureStore(root).key(extractor, make_key("2", params, "0" * 64, prov["libraries"]), prov)


def video_arrays(seed, n, dim=3):
    rng = np.random.default_rng(seed)
    return {"data": rng.standard_normal((n, dim)).astype(np.float16),
            "mask": rng.random(n) > 0.2,
            "t": np.sort(rng.random(n)) * 10,
            "box": rng.random((n, 4)).astype(np.float32)}


def put(handle, vid, arrays, chunk=16, **attrs):
    with handle.begin_video(vid, chunk_frames=chunk) as w:
        w.append(arrays)
        w.attrs.update(attrs)
        w.commit()


@pytest.fixture()
def store3(tmp_path):
    handle = open_key(tmp_path)
    lengths = {"a": 40, "b": 0, "c": 17, "d": 100}
    truth = {}
    for i, (vid, n) in enumerate(lengths.items()):
        truth[vid] = video_arrays(i, n)
        put(handle, vid, truth[vid], fps=25.0 + i)
    return tmp_path, handle, truth


def test_read_video_returns_arrays_and_attrs(store3):
    root, handle, truth = store3
    arrays, attrs = read_video(root, EXT, handle.key, "d")
    assert sorted(arrays) == ["box", "data", "mask", "t"]
    for name, value in truth["d"].items():
        np.testing.assert_array_equal(arrays[name], value)
        assert arrays[name].dtype == value.dtype
    assert attrs == {"original_id": "d", "fps": 28.0}
    only, _ = read_video(root, EXT, handle.key, "a", arrays=["mask"])
    assert list(only) == ["mask"]


def test_read_video_names_what_is_missing(store3):
    root, handle, _ = store3
    with pytest.raises(InputError) as err:
        read_video(root, EXT, handle.key, "zzz")
    assert err.value.reason == "missing_video" and "zzz" in str(err.value)
    with pytest.raises(InputError, match="logits"):
        read_video(root, EXT, handle.key, "a", arrays=["logits"])
    with pytest.raises(InputError) as err:
        read_video(root, EXT, "2-deadbeef", "a")
    assert err.value.reason == "missing_key"


def test_read_concat_is_contiguous_in_the_order_asked(store3):
    root, handle, truth = store3
    order = ["d", "b", "a", "c"]
    cat = read_concat(root, EXT, handle.key, order, arrays=("data", "mask", "t", "box"))
    assert isinstance(cat, Concat) and cat.video_ids == order
    assert cat.offsets.dtype == np.int64 and cat.offsets.tolist() == [0, 100, 100, 140, 157]
    for name in ("data", "mask", "t", "box"):
        assert cat.arrays[name].flags["C_CONTIGUOUS"]
        assert cat.arrays[name].dtype == truth["a"][name].dtype
        np.testing.assert_array_equal(cat.arrays[name], np.concatenate([truth[v][name] for v in order]))
    np.testing.assert_array_equal(cat.slice("a")["t"], truth["a"]["t"])
    np.testing.assert_array_equal(cat.slice(0)["data"], truth["d"]["data"])
    assert cat.slice("b")["data"].shape == (0, 3)
    assert [a["fps"] for a in cat.attrs] == [28.0, 26.0, 25.0, 27.0]


def test_read_concat_refuses_unfinished_or_unknown_videos(store3):
    root, handle, _ = store3
    with pytest.raises(InputError) as err:
        read_concat(root, EXT, handle.key, ["a", "nope"])
    assert err.value.reason == "missing_video"
    with pytest.raises(InputError, match="logits"):
        read_concat(root, EXT, handle.key, ["a"], arrays=("logits",))


def test_read_concat_reads_many_videos(tmp_path):
    """150 videos in one concatenation, each in its place (speed: benchmarks' windows section)."""
    handle = open_key(tmp_path)
    ids = [f"v{i:03d}" for i in range(150)]
    for i, vid in enumerate(ids):
        put(handle, vid, {"data": np.full((700, 64), i, np.float16), "mask": np.ones(700, bool),
                          "t": np.arange(700) / 30.0}, chunk=512)
    cat = read_concat(tmp_path, EXT, handle.key, ids)
    assert cat.arrays["data"].shape == (105000, 64)
    assert list(cat.offsets[:3]) == [0, 700, 1400] and cat.offsets[-1] == 105000
    for i in (0, 77, 149):
        assert float(cat.arrays["data"][cat.offsets[i]:cat.offsets[i + 1]].mean()) == float(i)


def test_resolve_key(tmp_path):
    with pytest.raises(InputError) as err:
        stored_key(tmp_path, EXT)
    assert err.value.reason == "missing_key"
    first = open_key(tmp_path, dim=3)
    assert stored_key(tmp_path, EXT) == first.key
    assert stored_key(tmp_path, EXT, first.key) == first.key
    second = open_key(tmp_path, dim=5)
    with pytest.raises(InputError) as err:
        stored_key(tmp_path, EXT)
    assert err.value.reason == "ambiguous_key" and first.key in str(err.value) and second.key in str(err.value)
    with pytest.raises(InputError) as err:
        stored_key(tmp_path, EXT, "2-00000000")
    assert err.value.reason == "missing_key"
    (first.path.parent / ".tmp-junk").mkdir()
    assert stored_key(tmp_path, EXT, second.key) == second.key


def test_list_keys_counts_done_failed_and_not_applicable(store3):
    root, handle, _ = store3
    handle.record_error("e1", "decode_error", "boom")
    handle.record_error("e2", "no_audio_stream", "silent film")
    handle.record_error("a", "decode_error", "an old failure, since fixed")
    other = open_key(root, extractor="other")
    keys = list_keys(root)
    assert [(k["extractor"], k["key"]) for k in keys] == [(EXT, handle.key), ("other", other.key)]
    mine = keys[0]
    assert (mine["n_done"], mine["n_failed"], mine["n_not_applicable"]) == (4, 1, 1)
    assert mine["frames"] == 157 and mine["bytes"] > 0 and mine["path"] == str(handle.path)
    assert mine["provenance"]["params"] == {"dim": 3}
    assert len(error_rows(root, EXT, handle.key)) == 3


def test_last_manifest_line_per_id_wins(store3):
    root, handle, _ = store3
    from store.writer import append_jsonl
    row = dict(manifest_rows(root, EXT, handle.key)[0], note="rewritten")
    append_jsonl(handle.path / "manifest.jsonl", row)
    rows = manifest_rows(root, EXT, handle.key)
    assert len(rows) == 4 and [r for r in rows if r["video_id"] == row["video_id"]][0]["note"] == "rewritten"
