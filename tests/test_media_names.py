"""Every media name in an input folder is accounted for: a row that is featurized, a row that
fails with a reason, or a name the summary lists as skipped. Nothing vanishes."""
import os
import shutil

import pytest

from featurize import datasets
from featurize.demo import write_demo_corpus
from featurize.pipeline import run_features


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    write_demo_corpus(root, n=1, seconds=1.0, seed=5)
    return next((root / "videos").glob("*.mp4"))


def test_broken_links_loops_folders_and_hidden_names(clip, tmp_path, capsys):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    shutil.copy(clip, d / "good.mp4")
    (d / "linked").mkdir()
    shutil.copy(clip, d / "linked" / "deep.mp4")
    os.symlink(d / "linked", d / "sub" / "alias")          # a folder link: followed once
    os.symlink(d, d / "sub" / "up")                        # a folder loop: listed as skipped
    os.symlink("nowhere.mp4", d / "dangling.mp4")
    os.symlink("loop.mp4", d / "loop.mp4")
    os.mkfifo(d / "pipe.mp4")
    (d / "folder.mp4").mkdir()
    shutil.copy(clip, d / ".hidden.mp4")
    (d / ".cache").mkdir()
    shutil.copy(clip, d / ".cache" / "x.mp4")
    rows = datasets.build("generic", d)
    s = run_features(rows, tmp_path / "store", ["logmel"], scheduler="inline", progress=False)
    out = capsys.readouterr().out
    assert s.done == 2  # good.mp4 and linked/deep.mp4 (once, though reachable twice)
    assert s.failed == {"missing_file": 1, "bad_path": 3}, s.failed
    assert {f["video_id"] for f in s.failures} <= {"dangling", "loop", "pipe", "folder"}
    why = dict((os.path.basename(str(p)), w) for p, w in s.skipped_names)
    assert why[".hidden.mp4"] == "hidden name" and why[".cache"] == "hidden folder"
    assert any("loop" in w for w in why.values())
    assert "skipped" in out and ".hidden.mp4" in out
    names = [n for n in os.listdir(d) if n.endswith(".mp4")] + ["deep.mp4", ".cache"]
    accounted = s.done + s.failed_total + len(s.skipped_names)
    assert accounted >= len(names) == 8


def test_skipped_rows_stay_out_of_the_dataset_manifest(clip, tmp_path):
    from featurize.pipeline import write_manifest
    from store.writer import FeatureStore

    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(clip, d / "a.mp4")
    shutil.copy(clip, d / ".b.mp4")
    rows = datasets.build("generic", d)
    assert len(rows) == 2
    write_manifest(rows, tmp_path / "store", "generic")
    assert [r["video_id"] for r in FeatureStore(tmp_path / "store").read_dataset_manifest("generic")] == ["a"]
