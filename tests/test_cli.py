"""The `emocache` console script as a user runs it: separate processes, exit codes, messages."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

EMOCACHE = Path(sys.executable).parent / "emocache"


def run(*args, ok=True):
    cmd = [str(EMOCACHE)] if EMOCACHE.exists() else [sys.executable, "-m", "experiments.cli"]
    p = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok and p.returncode != 0:
        raise AssertionError(f"emocache {args} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "corpus"
    run("demo-data", "--out", out, "--n", 4, "--seconds", 2)
    return out


def test_features_then_rerun_ls_verify_export(corpus, tmp_path):
    store = tmp_path / "store"
    first = run("features", "--input", corpus, "--dataset", "demo", "--store", store,
                "--extractors", "logmel,mfcc", "--workers", 1, "--quiet")
    assert "done 8" in first.stdout, first.stdout
    again = run("features", "--input", corpus, "--dataset", "demo", "--store", store,
                "--extractors", "logmel,mfcc", "--workers", 1, "--quiet")
    assert "done 0" in again.stdout and "already done 8" in again.stdout, again.stdout

    listing = run("ls", "--store", store).stdout
    assert "logmel" in listing and "mfcc" in listing

    assert "0 problem(s)" in run("verify", "--store", store).stdout

    h5 = tmp_path / "mfcc.h5"
    run("export", "--store", store, "--key", "mfcc", "--h5", h5)
    with h5py.File(h5, "r") as f:
        videos = [k for k in f.keys() if isinstance(f[k], h5py.Group)]
    assert len(videos) == 4

    # damage one finished video: verify names it and fails
    key_dir = next((store / "features" / "mfcc").iterdir())
    victim = sorted(p for p in key_dir.iterdir() if p.is_dir())[0]
    shutil.rmtree(victim / "data")
    bad = run("verify", "--store", store, ok=False)
    assert bad.returncode == 1 and victim.name in bad.stdout


def test_bad_file_is_named_and_the_batch_finishes(corpus, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(corpus / "videos" / "demo_00.mp4", folder / "good.mp4")
    (folder / "notes.mp4").write_text("this is not a video\n")
    store = tmp_path / "store"
    p = run("features", "--input", folder, "--dataset", "generic", "--store", store,
            "--extractors", "mfcc", "--workers", 1, "--quiet", ok=False)
    assert p.returncode == 1
    assert "not_media" in p.stdout and "notes" in p.stdout
    errors = next((store / "features" / "mfcc").iterdir()) / "errors.jsonl"
    assert "not_media" in errors.read_text()
    assert "done 1" in p.stdout


def test_train_errors_are_clear(tmp_path, corpus):
    p = run("train", "--exp", "no-such-study", "--store", tmp_path, ok=False)
    assert p.returncode == 2 and "demo" in p.stderr  # lists the studies that exist

    store = tmp_path / "store"
    run("features", "--input", corpus, "--dataset", "demo", "--store", store,
        "--extractors", "mfcc", "--workers", 1, "--quiet")
    p = run("train", "--exp", "demo", "--store", store, ok=False)
    assert p.returncode == 2
    assert "missing_key" in p.stderr and "emocache features" in p.stderr  # the command to run
