"""verify() finds each kind of damage; HDF5 export/import round-trips; the inventory table."""
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import zarr

from store import FeatureStore, InputError, make_key, manifest_rows, read_video
from store.export import export_h5, import_h5
from store.inventory import summary
from store.reader import error_rows
from store.verify import verify
from store.writer import append_jsonl

EXT = "faces"


def prov(**params):
    params = params or {"size": 8, "margin": 0.4}
    return {"extractor": EXT, "version": "1", "params": params, "weights_sha256": None,
            "libraries": {"mediapipe": "0.10.14"}}


def open_key(root, **params):
    p = prov(**params)
    return FeatureStore(root).key(EXT, make_key("1", p["params"], None, p["libraries"]), p)


def crops_video(seed, n):
    rng = np.random.default_rng(seed)
    return {"data": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            "mask": rng.random(n) > 0.1,
            "t": np.arange(n) / 30.0,
            "box": rng.random((n, 4)).astype(np.float32),
            "score": rng.random(n).astype(np.float16)}


def put(handle, vid, arrays, chunk=10, original_id=None, **attrs):
    with handle.begin_video(vid, original_id=original_id, chunk_frames=chunk) as w:
        w.append(arrays)
        w.attrs.update(attrs)
        return w.commit({"input_size": 1000 + len(vid)})


@pytest.fixture()
def good(tmp_path):
    handle = open_key(tmp_path)
    truth = {"v1": crops_video(1, 35), "v2": crops_video(2, 12), "v0": crops_video(3, 0)}
    for vid, arrays in truth.items():
        put(handle, vid, arrays, original_id=f"raw/{vid}", fps=30.0, track={"frames": len(arrays["t"])})
    handle.record_error("bad", "decode_error", "moov atom not found", original_id="raw/bad")
    handle.record_error("wav", "no_video_stream", "audio only")
    return tmp_path, handle, truth


def edit_manifest(handle, vid, **changes):
    path = handle.path / "manifest.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        if row["video_id"] == vid:
            row.update(changes)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def errors_only(problems):
    return [p for p in problems if not p.startswith("warning:")]


def test_a_sound_store_verifies_clean(good):
    assert verify(good[0]) == []


def test_verify_of_an_empty_root_is_clean(tmp_path):
    assert verify(tmp_path) == []


def test_deleted_chunk_file_is_found(good):
    root, handle, _ = good
    os.remove(handle.path / "v1" / "data" / "c.1.0.0.0")
    problems = verify(root)
    assert len(problems) == 1 and "v1/data" in problems[0] and "chunk files missing" in problems[0]


def test_truncated_chunk_file_is_reported_not_raised(good):
    root, handle, _ = good
    chunk = handle.path / "v2" / "box" / "c.0.0"
    chunk.write_bytes(chunk.read_bytes()[:7])
    problems = verify(root)
    assert len(problems) == 1 and "v2/box" in problems[0] and "unreadable" in problems[0]


def test_missing_group_metadata_is_reported_not_raised(good):
    root, handle, _ = good
    os.remove(handle.path / "v2" / "zarr.json")
    problems = verify(root)
    assert len(problems) == 1 and "v2" in problems[0] and "unreadable" in problems[0]


def test_manifest_frames_that_disagree_with_the_arrays(good):
    root, handle, _ = good
    edit_manifest(handle, "v1", frames=36)
    problems = verify(root)
    assert problems and all("v1" in p and "manifest says 36" in p for p in problems)


def test_manifest_dtype_or_shape_that_disagrees_with_the_arrays(good):
    root, handle, _ = good
    row = [r for r in manifest_rows(root, EXT, handle.key) if r["video_id"] == "v2"][0]
    edit_manifest(handle, "v2", arrays={**row["arrays"], "box": [[12, 4], "float64"]})
    problems = verify(root)
    assert len(problems) == 1 and "v2/box" in problems[0] and "float64" in problems[0]


def test_arrays_of_one_video_with_different_lengths(good):
    root, handle, _ = good
    arr = zarr.open_array(str(handle.path / "v1" / "box"), mode="r+")
    arr.resize((30, 4))
    problems = verify(root)
    assert any("differ in length" in p for p in problems)
    assert any("v1/box: 30 frames, manifest says 35" in p for p in problems)


def test_bad_mask_and_time_arrays(tmp_path):
    handle = open_key(tmp_path)
    ok = crops_video(1, 20)
    put(handle, "mask_u8", {**ok, "mask": ok["mask"].astype(np.uint8)})
    put(handle, "t_f32", {**ok, "t": ok["t"].astype(np.float32)})
    put(handle, "t_back", {**ok, "t": ok["t"][::-1].copy()})
    problems = verify(tmp_path)
    assert len(problems) == 3
    assert any("mask_u8/mask" in p and "must be bool" in p for p in problems)
    assert any("t_f32/t" in p and "float64" in p for p in problems)
    assert any("t_back/t" in p and "decreases" in p for p in problems)


def test_edited_provenance_no_longer_matches_its_key(good):
    root, handle, _ = good
    path = handle.path / "extractor.json"
    data = json.loads(path.read_text())
    data["params"]["margin"] = 0.1
    path.write_text(json.dumps(data))
    problems = verify(root)
    assert len(problems) == 1 and "hashes to key" in problems[0] and handle.key in problems[0]


def test_manifest_line_without_group_and_group_without_line(good):
    root, handle, truth = good
    shutil.rmtree(handle.path / "v2")
    shutil.copytree(handle.path / "v1", handle.path / "orphan")
    problems = verify(root)
    assert len(problems) == 2
    assert any("v2: manifest line but no video folder" in p for p in problems)
    assert any("orphan: video folder without a manifest line" in p for p in problems)


def test_leftover_temp_folder_is_only_a_warning(good):
    root, handle, _ = good
    writer = handle.begin_video("v9")
    writer.append(crops_video(9, 5))  # never committed, never aborted: what a killed process leaves
    problems = verify(root)  # the temp folder and the (live) claim on v9
    assert len(problems) == 2 and all(p.startswith("warning:") for p in problems)
    assert any(".tmp-v9-" in p for p in problems) and any(".claim-v9" in p and "being written" in p
                                                          for p in problems)
    assert errors_only(problems) == []


def test_torn_manifest_line_is_a_warning_from_verify(good):
    root, handle, _ = good
    with open(handle.path / "manifest.jsonl", "a") as fh:
        fh.write('{"video_id": "v')
    problems = verify(root)
    assert len(problems) == 1 and problems[0].startswith("warning:") and "torn" in problems[0]


# --- HDF5 -------------------------------------------------------------------------------------

def test_h5_export_import_round_trip(good, tmp_path_factory):
    root, handle, truth = good
    old_error = {"video_id": "old", "original_id": "old", "reason": "truncated", "message": "cut",
                 "not_applicable": False, "time": "2020-01-01T00:00:00+00:00"}
    append_jsonl(handle.path / "errors.jsonl", old_error)  # import must keep the original time
    h5_path = tmp_path_factory.mktemp("h5") / "faces.h5"
    assert export_h5(root, EXT, None, h5_path) == h5_path
    with h5py.File(h5_path, "r") as h5:  # plain HDF5 tools see the arrays and attributes
        assert sorted(h5) == ["v0", "v1", "v2"]
        assert h5["v1/data"].dtype == np.uint8 and h5["v1/data"].compression == "gzip"
        assert h5["v1"].attrs["original_id"] == "raw/v1" and h5["v1"].attrs["fps"] == 30.0
        assert json.loads(h5.attrs["provenance"]) == prov()
    other = tmp_path_factory.mktemp("other")
    assert import_h5(h5_path, other) == handle.key
    for vid, arrays in truth.items():
        back, attrs = read_video(other, EXT, handle.key, vid)
        assert sorted(back) == sorted(arrays)
        for name, value in arrays.items():
            assert back[name].dtype == value.dtype
            np.testing.assert_array_equal(back[name], value)
        assert attrs == read_video(root, EXT, handle.key, vid)[1]
    by_id = lambda rows: sorted(rows, key=lambda r: r["video_id"])  # noqa: E731
    assert by_id(manifest_rows(other, EXT, handle.key)) == by_id(manifest_rows(root, EXT, handle.key))
    assert error_rows(other, EXT, handle.key) == error_rows(root, EXT, handle.key)
    assert (other / "features" / EXT / handle.key / "extractor.json").read_text() == \
        (handle.path / "extractor.json").read_text()
    assert verify(other) == []
    import_h5(h5_path, other)  # a second import adds nothing
    assert len((other / "features" / EXT / handle.key / "manifest.jsonl").read_text().splitlines()) == 3
    assert len(error_rows(other, EXT, handle.key)) == 3


def test_h5_import_into_a_conflicting_key_refuses(good, tmp_path_factory):
    root, handle, _ = good
    h5_path = export_h5(root, EXT, handle.key, tmp_path_factory.mktemp("h5") / "x.h5")
    other = tmp_path_factory.mktemp("other")
    target = other / "features" / EXT / handle.key
    target.mkdir(parents=True)
    (target / "extractor.json").write_text(json.dumps({**prov(), "note": "someone else's"}))
    with pytest.raises(InputError) as err:
        import_h5(h5_path, other)
    assert err.value.reason == "key_conflict"


def test_h5_import_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as h5:
        h5["x"] = np.zeros(3)
    with pytest.raises(InputError):
        import_h5(path, tmp_path / "root")


# --- inventory --------------------------------------------------------------------------------

def test_inventory_summary_table(good):
    root, handle, _ = good
    open_key(root, size=16, margin=0.4)
    text = summary(root)
    lines = text.splitlines()
    assert lines[0].split() == ["extractor", "key", "done", "failed", "n/a", "frames", "face", "disk"]
    row = [line for line in lines if handle.key in line][0].split()
    assert row[:7] == [EXT, handle.key, "3", "1", "1", "47", "-"]   # no face_rate in these manifests
    assert "2 key(s)" in lines[-1]


def test_inventory_of_an_empty_root(tmp_path):
    assert "no feature keys" in summary(tmp_path)
