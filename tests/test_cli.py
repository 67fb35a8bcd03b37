"""The `emocache` console script as a user runs it: separate processes, exit codes, messages."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from clirun import emocache as run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "corpus"
    run("demo-data", "--out", out, "--n", 4, "--seconds", 2)
    return out


@pytest.fixture(scope="module")
def audio_store(corpus, tmp_path_factory):
    """logmel and mfcc of the corpus, made once for the tests that train or plan on it (each
    copies it: `store` below). Inline: these tests are about train/plan/predict, and each
    used to featurize the same corpus on its own 1-worker cluster (~10-20 s apiece at load 5);
    features itself is tested above and in test_faults.py."""
    store = tmp_path_factory.mktemp("cli-store") / "store"
    run("features", "--input", corpus, "--dataset", "demo", "--store", store,
        "--extractors", "logmel,mfcc", "--scheduler", "inline", "--quiet")
    return store


@pytest.fixture
def store(audio_store, tmp_path):
    """A private copy of `audio_store` (a test may add keys or runs to it)."""
    shutil.copytree(audio_store, tmp_path / "store", symlinks=True)
    return tmp_path / "store"


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


def test_train_errors_are_clear(tmp_path, store):
    runs = tmp_path / "runs"   # never the repo's own runs/
    p = run("train", "--exp", "no-such-study", "--store", tmp_path, "--runs", runs, ok=False)
    assert p.returncode == 2 and "demo" in p.stderr  # lists the studies that exist

    p = run("train", "--exp", "demo", "--store", store, "--runs", runs, ok=False)
    assert p.returncode == 2
    assert "missing_key" in p.stderr and "emocache features" in p.stderr  # the command to run
    assert not runs.exists()          # nothing trained: no stub run folder

    # a run that fails after it started is marked FAILED with its error, and is not "the latest run"
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY)
    p = run("train", "--exp", study, "--store", store, "--runs", runs, "--set", "optim.name=nosuch", ok=False)
    assert p.returncode == 2
    (failed,) = (runs / "tiny").iterdir()
    assert "nosuch" in (failed / "FAILED").read_text()
    from experiments.train import latest_finished

    assert latest_finished(runs / "tiny") is None


TINY = """extends: demo
name: tiny
features:
  visual: [{extractor: mfcc}]
  audio_b: [{extractor: mfcc}]
  audio_mfcc: [{extractor: mfcc}]
data: {window: 30, hop: 20}
folds: {scheme: kfold, n: 4, stratify: null, test: 0, val: 1}
head: {args: {visual_channels: [4], audio_channels: [4], kernel_size: 3}}
train: {epochs: 2, batch_size: 2}
"""


def first_line(p) -> str:
    return (p.stderr or p.stdout).strip().splitlines()[0]


@pytest.mark.parametrize("args, words", [
    (["features", "--input", ".", "--store", "s", "--workers", "-3"], ["--workers", "at least 1"]),
    (["features", "--input", ".", "--store", "s", "--workers", "0"], ["--workers", "at least 1"]),
    (["features", "--input", ".", "--store", "s", "--dataset", "cremd"], ["--dataset", "cremad"]),
    (["verify", "--store", "/no/such/dir"], ["--store", "/no/such/dir", "not found"]),
    (["ls", "--store", "/no/such/dir"], ["--store", "not found"]),
    (["export", "--store", "/no/such/dir", "--key", "mfcc", "--h5", "x.h5"], ["--store", "not found"]),
    (["train", "--exp", "demo", "--store", "/no/such/dir"], ["--store", "not found"]),
])
def test_argument_errors_are_one_line_exit_2_before_any_work(args, words, tmp_path):
    """Checked at parse time: no hang (--workers -3 used to wait for ever on a cluster with no
    workers), no traceback (--dataset cremd), no false all-clear (verify of a missing store)."""
    p = run(*args, ok=False, timeout=60, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "s").exists() and not (tmp_path / "runs").exists()


def test_a_folder_that_is_no_store_is_refused(tmp_path):
    p = run("verify", "--store", tmp_path, ok=False)
    assert p.returncode == 2 and "not an emocache store" in first_line(p)
    (tmp_path / "datasets").mkdir()
    p = run("train", "--store", tmp_path, "--runs", tmp_path / "runs", ok=False)
    assert p.returncode == 2 and "--exp" in first_line(p)     # a user error like any other: 2, not 1


def test_version_and_help_for_every_option():
    p = run("--version")
    assert p.stdout.startswith("emocache ")
    from experiments.cli import build_parser

    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    missing = [f"{verb} {' '.join(a.option_strings) or a.dest}" for verb, sp in verbs.items()
               for a in sp._actions if a.dest != "help" and not a.help]
    assert not missing, f"options without help text: {missing}"


def test_studies_lists_every_shipped_study():
    from experiments import config as C

    p = run("studies")
    names = [line.split()[0] for line in p.stdout.strip().splitlines()]
    assert names == C.available()
    demo = next(line for line in p.stdout.splitlines() if line.startswith("demo "))
    assert "frames" in demo and "mesh,fer,logmel,mfcc" in demo


@pytest.mark.slow
def test_plan_names_every_missing_key_and_its_one_command_makes_them(store, tmp_path):
    p = run("plan", "--exp", "eri-demo", "--store", store)
    lines = p.stdout.splitlines()
    assert "1 present, 2 missing" in lines[0], p.stdout
    assert [ln.split()[1].split("/")[0] for ln in lines[1:4]] == ["fer", "mesh", "mfcc"]
    cmds = [ln.strip() for ln in lines if ln.strip().startswith("emocache features")]
    assert len(cmds) == 1 and "--extractors fer,mesh" in cmds[0], p.stdout

    # train names all of them at once (not mesh now, fer after featurizing mesh, ...)
    t = run("train", "--exp", "eri-demo", "--store", store, "--runs", tmp_path / "runs", ok=False)
    assert t.returncode == 2 and "needs 2 feature key(s)" in t.stderr and "fer" in t.stderr and "mesh" in t.stderr

    argv = shlex.split(cmds[0])[1:] + ["--scheduler", "inline", "--quiet"]
    run(*argv)
    again = run("plan", "--exp", "eri-demo", "--store", store).stdout
    assert "3 present, 0 missing" in again and "ready: emocache train --exp eri-demo" in again


NOISE = ("W0000", "INFO: Created TensorFlow Lite", "absl::InitializeLog", "still alive after", "Traceback")


@pytest.mark.slow
def test_features_is_quiet_by_default_and_v_shows_the_native_logs(tmp_path):
    """A local run with the mediapipe extractors: no TFLite/absl banners per worker, no nanny
    'still alive after 4.0 seconds, killing' at the end; `-v` brings the native logs back."""
    corpus = tmp_path / "c"
    run("demo-data", "--out", corpus, "--n", 1, "--seconds", 1)
    p = run("features", "--input", corpus, "--store", tmp_path / "s", "--extractors", "faces,mesh,mfcc",
            "--workers", 1, "--quiet")
    assert not [n for n in NOISE if n in p.stderr], p.stderr
    assert p.stderr.strip().splitlines() == ["loading models (faces, mesh, mfcc) on 1 worker(s)"], p.stderr
    assert p.stdout.startswith("featurized 1 video(s) x 3 extractor(s)")

    v = run("-v", "features", "--input", corpus, "--store", tmp_path / "s2", "--extractors", "faces",
            "--workers", 1, "--quiet")
    assert "TensorFlow Lite" in v.stderr or "W0000" in v.stderr, v.stderr


@pytest.mark.slow
def test_two_workers_close_without_the_nanny_killing_them_on_a_busy_machine(corpus, tmp_path):
    """A 2-worker local run while every core is busy: the workers used to spend 11-14 s (load
    12-16) in the interpreter's final garbage collection, past the nanny's grace, which killed
    them with `Worker process still alive after 24.0 seconds, killing`. Two of the corpus's
    videos, one a worker: the exit's cost is the models each worker loaded, not the videos."""
    media = tmp_path / "media"
    media.mkdir()
    for name in ("demo_00.mp4", "demo_01.mp4"):
        (media / name).symlink_to(corpus / "videos" / name)
    burn = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        p = run("features", "--input", media, "--dataset", "generic", "--store", tmp_path / "s",
                "--extractors", "faces,mesh,fer,mfcc", "--workers", 2, "--quiet")
    finally:
        for b in burn:
            b.kill()
            b.wait()
    assert "still alive after" not in p.stderr and "killing" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == ["loading models (faces, mesh, fer, mfcc) on 2 worker(s)"], p.stderr
    assert "failed 0" in p.stdout, p.stdout


@pytest.mark.slow
def test_a_video_without_faces_is_named_in_the_summary_and_in_ls(corpus, tmp_path):
    """A face-less video used to pass as `failed 0` with nothing said."""
    import numpy as np

    from featurize.demo import encode_mp4

    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(corpus / "videos" / "demo_00.mp4", folder / "face.mp4")
    encode_mp4(folder / "wall.mp4", lambda i: np.full((96, 128, 3), 90 + i % 5, np.uint8), 25, 25,
               (128, 96), np.zeros(16000, np.float32), 16000)
    store = tmp_path / "store"
    p = run("features", "--input", folder, "--dataset", "generic", "--store", store,
            "--extractors", "faces", "--workers", 1, "--quiet")
    assert "faces: a face in" in p.stdout and "1 under 50%" in p.stdout, p.stdout
    assert "warning: wall: a face in only 0% of frames" in p.stdout, p.stdout
    assert "warning: face:" not in p.stdout

    listing = run("ls", "--store", store).stdout
    head = listing.splitlines()[0]
    assert "face" in head.split(), listing
    assert [ln for ln in listing.splitlines() if ln.startswith("warning:") and "wall" in ln
            and "0% of frames" in ln], listing


@pytest.mark.slow
def test_predict_prints_each_path_once_one_not_media_line_and_the_demo_warning(corpus, store, tmp_path):
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY)
    t = run("train", "--exp", study, "--store", store, "--runs", tmp_path / "runs")
    run_dir = Path(t.stdout.strip().splitlines()[-1].split("run: ", 1)[1])
    assert (run_dir / "tensorboard").is_dir() and list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert not (run_dir / "FAILED").exists()
    # demo.yaml's train.threads: 1 (two threads were 6-10x slower per epoch on a busy 2-core machine)
    import json
    assert json.loads((run_dir / "runinfo.json").read_text())["machine"]["torch_threads"] == 1

    # --run RUNS/<study>: its latest finished run
    p = run("predict", corpus / "videos" / "demo_01.mp4", "--run", tmp_path / "runs" / "tiny",
            "--out", tmp_path / "pred", "--store", store)
    assert f"run: {run_dir}" in p.stderr
    out = p.stdout.strip().splitlines()
    csv_path, png = tmp_path / "pred" / "demo_01.csv", tmp_path / "pred" / "demo_01.png"
    assert out == [f"predictions: {csv_path}", f"plot: {png}"], p.stdout
    assert csv_path.is_file() and png.is_file()
    assert p.stderr.strip().splitlines()[-1].startswith("warning:") and "synthetic demo corpus" in p.stderr

    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n")
    bad = run("predict", fake, "--run", run_dir, "--out", tmp_path / "pred2", ok=False)
    assert bad.returncode == 2 and bad.stdout == "", bad.stdout
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "not_media" in lines[0] and str(fake) in lines[0], bad.stderr

    # without --store: the features go to a temporary store, gone once the CSV is written
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    run("predict", corpus / "videos" / "demo_02.mp4", "--run", run_dir, "--out", tmp_path / "pred3",
        env={"TMPDIR": str(tmpdir)})
    assert (tmp_path / "pred3" / "demo_02.csv").is_file()
    assert not list(tmpdir.glob("emocache-predict-*")), list(tmpdir.iterdir())


@pytest.mark.slow
def test_train_ablate_with_three_seeds_reports_fusion_modalities_and_mean_sd(store, tmp_path):
    """`emocache train --ablate --seeds 3` on the demo corpus (one epoch): per-seed runs with
    their modality runs, the aggregate report with mean ± sd, and a clear error for bad seeds."""
    import json

    study = tmp_path / "tiny.yaml"
    study.write_text(TINY.replace("visual: [{extractor: mfcc}]", "visual: [{extractor: logmel}]"))
    runs = tmp_path / "runs"
    bad = run("train", "--exp", study, "--store", store, "--runs", runs, "--seeds", "1,1", ok=False)
    assert bad.returncode == 2 and "--seeds" in bad.stderr and not runs.exists()
    t = run("train", "--exp", study, "--store", store, "--runs", runs, "--ablate", "--seeds", "3",
            "--set", "train.epochs=1")
    (top,) = (runs / "tiny").iterdir()
    assert f"report {top / 'report.md'}" in t.stdout
    agg = json.loads((top / "metrics.json").read_text())
    assert agg["seeds"] == [0, 1, 2] and set(agg["ablation"]["methods"]) == {"fusion", "visual", "audio_b",
                                                                           "audio_mfcc"}
    text = (top / "report.md").read_text()
    assert "# tiny: 3 seeds (0, 1, 2)" in text and "best single modality" in text
    assert "fusion (pooled)" not in text             # one fold: the head's row is the fusion's
    for row in ("head (tiny)", "visual alone (pooled)", "audio_mfcc alone (pooled)"):
        assert f"| {row} | ccc_mean | " in text, row
    for s in (0, 1, 2):
        seed_report = (top / f"seed-{s}" / "report.md").read_text()
        assert "| audio_b alone | `tcn` | `modality-audio_b` |" in seed_report
        assert (top / f"seed-{s}" / "modality-visual" / "best.pt").is_file()
    from experiments.train import latest_finished

    assert latest_finished(runs / "tiny") == top
