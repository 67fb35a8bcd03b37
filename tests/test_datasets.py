"""Dataset adapters on tiny files written in each corpus' format, plus the real shared files."""
import json

import numpy as np
import pytest

from featurize import datasets
from store.errors import InputError
from store.keys import is_safe_name

ROW_KEYS = {"video_id", "original_id", "path", "dataset", "split", "fold", "group", "labels", "frame_labels"}


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def check_rows(rows):
    assert rows
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert is_safe_name(r["video_id"])
        json.dumps(r)  # JSON-safe: it goes into manifest.jsonl


def test_registry_names_and_unknown():
    assert set(datasets.names()) == {"generic", "demo", "ravdess", "cremad", "emodb", "affwild2",
                                     "hume", "labelled-csv"}
    with pytest.raises(ValueError, match="unknown dataset adapter"):
        datasets.get("nope")
    with pytest.raises(InputError) as e:
        datasets.build("generic", "/nonexistent/folder")
    assert e.value.reason == "missing_file"


def test_generic_folder_with_labels(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "sub" / "b.wav")
    touch(tmp_path / ".hidden" / "c.mp4")
    touch(tmp_path / "notes.txt")
    (tmp_path / "labels.csv").write_text("path,label,split\na.mp4,happy,train\nsub/b.wav,sad,val\n"
                                         "gone.mp4,fear,test\n")
    rows = datasets.build("generic", tmp_path, labels=tmp_path / "labels.csv")
    check_rows(rows)
    by = {r["original_id"]: r for r in rows if not r.get("skipped")}
    assert set(by) == {"a", "b", "gone"}           # hidden folder and txt skipped; missing file kept
    assert [(r["original_id"], r["skipped"]) for r in rows if r.get("skipped")] == [(".hidden", "hidden folder")]
    assert by["a"]["labels"] == {"label": "happy"} and by["a"]["split"] == "train"
    assert by["b"]["split"] == "val"
    assert by["gone"]["path"].endswith("gone.mp4")


def test_generic_duplicate_stems_use_relative_paths(tmp_path):
    touch(tmp_path / "x" / "clip.mp4")
    touch(tmp_path / "y" / "clip.mp4")
    rows = datasets.build("generic", tmp_path)
    check_rows(rows)
    assert [r["original_id"] for r in rows] == ["x/clip", "y/clip"]
    assert len({r["video_id"] for r in rows}) == 2 and all("/" not in r["video_id"] for r in rows)


def test_labelled_csv_sanitizes_ids(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "path,label,split\nclips/v1.mp4,Fear,train\n../evil clip.mp4,Excitation,val\nclips/v3.mp4,Neutral,\n")
    rows = datasets.build("labelled-csv", tmp_path / "labels.csv")
    check_rows(rows)
    assert [r["labels"]["label"] for r in rows] == ["Fear", "Excitation", "Neutral"]
    assert [r["split"] for r in rows] == ["train", "val", None]
    evil = rows[1]
    assert evil["original_id"] == "../evil clip" and ".." not in evil["video_id"]
    assert rows[0]["path"] == str((tmp_path / "clips" / "v1.mp4").absolute())
    (tmp_path / "bad.csv").write_text("file,label\nx.mp4,a\n")
    with pytest.raises(InputError, match="path"):
        datasets.build("labelled-csv", tmp_path / "bad.csv")


def test_ravdess_names(tmp_path):
    touch(tmp_path / "Actor_01" / "01-01-07-02-02-01-01.mp4")
    touch(tmp_path / "Actor_12" / "03-02-03-01-01-02-12.wav")
    touch(tmp_path / "Actor_12" / "readme.mp4")
    rows = datasets.build("ravdess", tmp_path)
    check_rows(rows)
    a, b = rows
    assert a["labels"]["emotion"] == "disgust" and a["labels"]["intensity"] == "strong"
    assert a["group"] == "01" and a["labels"]["sex"] == "male" and a["labels"]["modality"] == "full-AV"
    assert b["labels"]["emotion"] == "happy" and b["labels"]["vocal_channel"] == "song"
    assert b["group"] == "12" and b["labels"]["sex"] == "female"
    only_audio = datasets.build("ravdess", tmp_path, modalities=("audio-only",))
    assert [r["original_id"] for r in only_audio] == ["03-02-03-01-01-02-12"]


def test_cremad_one_row_per_clip(tmp_path):
    touch(tmp_path / "VideoFlash" / "1001_DFA_ANG_XX.flv")
    touch(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    touch(tmp_path / "AudioWAV" / "1091_IEO_HAP_HI.wav")
    rows = datasets.build("cremad", tmp_path)
    check_rows(rows)
    assert [r["original_id"] for r in rows] == ["1001_DFA_ANG_XX", "1091_IEO_HAP_HI"]
    assert rows[0]["path"].endswith(".flv")       # the video is preferred
    assert rows[1]["labels"] == {"emotion": "happy", "emotion_code": "HAP", "level": "high",
                                 "sentence": "IEO", "actor": "1091"}
    assert rows[1]["group"] == "1091"
    wav_only = datasets.build("cremad", tmp_path, prefer=(".wav",))
    assert wav_only[0]["path"].endswith(".wav")


def test_emodb_names(tmp_path):
    touch(tmp_path / "wav" / "03a01Fa.wav")
    touch(tmp_path / "wav" / "16b10Wb.wav")
    rows = datasets.build("emodb", tmp_path)
    check_rows(rows)
    assert [(r["labels"]["emotion"], r["group"]) for r in rows] == [("happiness", "03"), ("anger", "16")]


def test_affwild2_va_set(tmp_path):
    va = tmp_path / "annotations" / "VA_Set"
    (va / "Train_Set").mkdir(parents=True)
    (va / "Validation_Set").mkdir(parents=True)
    (va / "Train_Set" / "vid1.txt").write_text("valence,arousal\n0.1,0.2\n-5,-5\n0.3,-0.4\n")
    (va / "Train_Set" / "10-60-1280x720_left.txt").write_text("valence,arousal\n0.5,0.5\n")
    (va / "Train_Set" / "10-60-1280x720_right.txt").write_text("valence,arousal\n-0.5,0.5\n")
    (va / "Validation_Set" / "vid2.txt").write_text("valence,arousal\n0,0\n")
    touch(tmp_path / "batch1" / "vid1.mp4")
    touch(tmp_path / "batch2" / "10-60-1280x720.mp4")
    rows = datasets.build("affwild2", tmp_path)
    check_rows(rows)
    by = {r["original_id"]: r for r in rows}
    assert by["vid1"]["split"] == "train" and by["vid2"]["split"] == "val"
    left, right = by["10-60-1280x720_left"], by["10-60-1280x720_right"]
    assert left["path"] == right["path"] and left["path"].endswith("batch2/10-60-1280x720.mp4")
    assert (left["hints"], right["hints"]) == ({"faces": {"person": "left"}}, {"faces": {"person": "right"}})
    assert left["video_id"] != right["video_id"] and by["vid1"]["hints"] == {}
    assert left["group"] == right["group"] == "10-60-1280x720"
    assert by["vid2"]["path"].endswith("vid2.mp4")     # not found: kept so the pipeline names it
    names, values = datasets.load_frame_labels(by["vid1"])
    assert names == ["valence", "arousal"] and values.dtype == np.float32 and values.shape == (3, 2)
    assert np.isnan(values[1]).all() and np.allclose(values[2], [0.3, -0.4])
    (va / "Train_Set" / "vid1.txt").write_text("v,a\n1,2\n")
    with pytest.raises(InputError) as e:
        datasets.load_frame_labels(by["vid1"])
    assert e.value.reason == "bad_labels"


def test_hume_data_info(tmp_path):
    emos = ["Adoration", "Amusement", "Anxiety", "Disgust", "Empathic-Pain", "Fear", "Surprise"]
    lines = ["File_ID,Split," + ",".join(emos) + ",Age,Country",
             "[00001],Train," + ",".join(["0.1"] * 7) + ",25,United States",
             "[00002],Val," + ",".join(["0.5"] * 7) + ",31,South Africa",
             "[00003],Test," + "," * 6 + ",,"]
    (tmp_path / "data_info.csv").write_text("\n".join(lines) + "\n")
    touch(tmp_path / "mp4" / "00001.mp4")
    touch(tmp_path / "mp4" / "00002.mp4")
    rows = datasets.build("hume", tmp_path)
    check_rows(rows)
    assert [r["original_id"] for r in rows] == ["00001", "00002", "00003"]
    assert [r["split"] for r in rows] == ["train", "val", "test"]
    assert rows[0]["labels"]["Adoration"] == pytest.approx(0.1) and rows[0]["labels"]["age"] == 25
    assert rows[1]["labels"]["country"] == "South Africa"
    assert rows[2]["labels"]["Fear"] is None
    assert rows[0]["path"].endswith("mp4/00001.mp4")


def test_demo_adapter_and_frame_labels(tmp_path):
    from featurize.demo import write_demo_corpus

    write_demo_corpus(tmp_path, n=4, seconds=1.0, size=(160, 96))
    rows = datasets.build(None, tmp_path)           # corpus.json -> the demo adapter
    check_rows(rows)
    assert len(rows) == 4 and {r["labels"]["quadrant"] for r in rows} == {
        "pos_high", "neg_high", "neg_low", "pos_low"}
    names, values = datasets.load_frame_labels(rows[0])
    assert names == ["valence", "arousal"] and values.shape == (25, 2)
    assert np.nanmean(values[:, 0]) == pytest.approx(rows[0]["labels"]["valence_mean"], abs=1e-3)


def test_manifest_jsonl_round_trip(tmp_path):
    rows = [{"video_id": "../up", "path": "clip.mp4", "labels": {"label": "a"}},
            {"video_id": "ok_id", "path": "/abs/x.mp4"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = datasets.build_rows(tmp_path / "m.jsonl")
    check_rows(out)
    assert out[0]["original_id"] == "../up" and out[0]["path"] == str(tmp_path / "clip.mp4")
    assert out[1]["video_id"] == "ok_id" and out[1]["labels"] == {}


@pytest.mark.data
def test_real_shared_files(shared_data):
    rav = datasets.build("ravdess", shared_data / "ravdess_av_clip")
    assert len(rav) == 1 and rav[0]["labels"]["emotion"] == "disgust" and rav[0]["group"] == "01"
    cre = datasets.build("cremad", shared_data / "cremad_av_samples")
    assert len(cre) == 12 and {r["group"] for r in cre} == {"1001", "1002"}
    assert all(r["path"].endswith(".flv") for r in cre if r["group"] == "1001")
    emo = datasets.build("emodb", shared_data / "emodb")
    assert len(emo) == 535 and len({r["group"] for r in emo}) == 10
    import csv
    truth = {r["path"].split("/")[-1][:-4]: r["emotion"]
             for r in csv.DictReader(open(shared_data / "emodb" / "labels.csv"))}
    assert all(truth[r["original_id"]] == r["labels"]["emotion"] for r in emo)
