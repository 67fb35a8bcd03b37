"""`emocache` — the verbs the Makefile wraps: features, verify, export, ls, demo-data, train, predict."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from store.errors import InputError


class _Parser(argparse.ArgumentParser):
    """A user error in the arguments is one line (the verb, the argument, what to give) and
    exit code 2, like every other user error; the usage stays one `--help` away."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _workers(text: str) -> int:
    """`--workers` at parse time: -3 used to start a LocalCluster with no workers and wait for
    ever; 0 silently meant every core."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: need at least 1 (leave it out for one per core)")
    return n


def _dataset(text: str) -> str:
    """A known adapter name (or alias), checked before any file is read."""
    from featurize import datasets

    try:
        datasets.get(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown adapter; known: {', '.join(datasets.names())}") from None
    return text


def _store(text: str) -> str:
    """A store that read verbs (verify, ls, export, train) can read: an existing folder with
    features/ or datasets/ inside. A missing one used to verify as `0 problem(s)`."""
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"{text}: not found (give the folder `emocache features "
                                         "--store` wrote, or run `emocache features` first)")
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a folder")
    if not ((p / "features").is_dir() or (p / "datasets").is_dir()):
        raise argparse.ArgumentTypeError(f"{text}: not an emocache store (no features/ or datasets/ "
                                         "inside; run `emocache features --store` on it first)")
    return text


def _study(text: str) -> str:
    """A study name from experiments/configs or a YAML path that exists."""
    from experiments import config

    try:
        config.study_path(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(f"{e.message}; {e.fix}") from None
    return text


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("emocache")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _rows_from_input(input_path: str, dataset: str | None) -> list[dict]:
    """A manifest .jsonl is taken as is; a folder or file goes through the dataset adapter
    (none named: a demo corpus is recognised, anything else is a generic folder)."""
    from featurize import datasets

    path = Path(input_path)
    if not path.exists():
        raise InputError(path, "missing_file", "input not found",
                         "give a folder of media, a dataset root, or a manifest .jsonl")
    return datasets.build_rows(path, dataset)


def _parse_shard(text: str | None):
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise SystemExit(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise SystemExit(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def _overrides(pairs: list[str]) -> dict:
    """`--param faces.margin=0.6` -> {"faces": {"margin": "0.6"}} (typed by the extractor config)."""
    out: dict = {}
    for p in pairs or []:
        if "=" not in p or "." not in p.split("=", 1)[0]:
            raise SystemExit(f"--param {p!r}: expected EXTRACTOR.FIELD=VALUE, e.g. faces.margin=0.6")
        k, v = p.split("=", 1)
        ext, field = k.split(".", 1)
        out.setdefault(ext, {})[field] = v
    return out


def _security(a):
    if not (a.tls_ca or a.tls_cert or a.tls_key):
        return None
    from featurize.pipeline import tls_security

    return tls_security(a.tls_ca, a.tls_cert, a.tls_key)


def cmd_features(a) -> int:
    from featurize.pipeline import run_features, write_manifest

    rows = _rows_from_input(a.input, a.dataset)
    name = a.name or (Path(a.input).parent.name if a.input.endswith(".jsonl")
                      else a.dataset or (rows[0].get("dataset") if rows else None) or "generic")
    extractors = [e.strip() for e in a.extractors.split(",") if e.strip()]
    cluster = None
    if a.cluster == "slurm":
        from featurize.cluster import load_cluster_config

        cluster = load_cluster_config(a.cluster_config)
    elif a.cluster_config:
        raise SystemExit("emocache features: --cluster-config needs --cluster slurm")
    write_manifest(rows, a.store, name)
    summary = run_features(rows, a.store, extractors, overrides=_overrides(a.param),
                           workers=a.workers, scheduler=a.scheduler, cluster=cluster, security=_security(a),
                           shard=_parse_shard(a.shard), progress=not a.quiet)
    return summary.exit_code


def cmd_slurm_script(a) -> int:
    from featurize.cluster import array_script, load_cluster_config

    cfg = load_cluster_config(a.cluster_config)
    args = ["--input", str(Path(a.input).resolve()), "--store", str(Path(a.store).resolve()),
            "--extractors", a.extractors]
    for flag, value in (("--dataset", a.dataset), ("--name", a.name)):
        if value:
            args += [flag, value]
    for p in a.param or []:
        args += ["--param", p]
    text = array_script(cfg, a.shards, args)
    logs = next(line.split(None, 2)[2] for line in text.splitlines() if line.startswith("#SBATCH -o"))
    Path(logs).parent.mkdir(parents=True, exist_ok=True)   # sbatch opens -o before the script runs
    Path(a.out).write_text(text)
    os.chmod(a.out, 0o755)
    print(f"wrote {a.out}: sbatch {a.out} runs {a.shards} array task(s), --shard i/{a.shards} each")
    return 0


def cmd_verify(a) -> int:
    from store.verify import repair, verify

    if a.repair:
        for line in repair(a.store):
            print(line)
    problems = verify(a.store)
    for p in problems:
        print(p)
    errors = [p for p in problems if not p.startswith("warning:")]
    print(f"verify {a.store}: {len(errors)} problem(s), {len(problems) - len(errors)} warning(s)")
    return 1 if errors else 0


def cmd_export(a) -> int:
    from store.export import export_h5
    from store.reader import stored_key

    extractor, _, key = a.key.partition("/")
    key = stored_key(a.store, extractor, key or None)
    export_h5(a.store, extractor, key, a.h5)
    print(f"wrote {a.h5} ({extractor}/{key})")
    return 0


def cmd_ls(a) -> int:
    from store.inventory import summary

    print(summary(a.store))
    return 0


def cmd_demo_data(a) -> int:
    from featurize.demo import write_demo_corpus

    write_demo_corpus(a.out, n=a.n, seconds=a.seconds, seed=a.seed)
    print(f"demo corpus: {a.n} videos in {a.out}")
    return 0


def cmd_train(a) -> int:
    from experiments.train import run_study

    from experiments.seeds import parse

    over = list(a.set or [])
    if a.ablate:
        over.append("report.ablations=true")
    if a.seeds:
        over.append(f"report.seeds={parse(a.seeds)}")
    run_study(a.exp, a.store, a.runs, overrides=over, resume=a.resume, device=a.device)
    return 0


def cmd_predict(a) -> int:
    from experiments.predict import predict_video

    from experiments import config
    from experiments.predict import trained_on_demo
    from experiments.train import latest_finished

    run = Path(a.run)
    if not (run / "config.yaml").is_file() and latest_finished(run) is not None:
        run = a.run = latest_finished(run)            # RUNS/<study>: its latest finished run
        print(f"run: {run}", file=sys.stderr)
    out = predict_video(a.video, run, out_dir=a.out, store_root=a.store)
    print(f"predictions: {out}")
    print(f"plot: {out.with_suffix('.png')}")
    if trained_on_demo(config.load(Path(a.run) / "config.yaml")):
        print(f"warning: {a.run} was trained on the synthetic demo corpus (drawn faces, tones): "
              "its predictions mean nothing for real faces", file=sys.stderr)
    return 0


def cmd_studies(a) -> int:
    from experiments.plan import studies

    rows = studies()
    wn = max(len(r["name"]) for r in rows)
    wt = max(len(r["task"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{wn}}  {r['task']:<{wt}}  {','.join(r['features']) or '-'}  {r['description']}")
    return 0


def cmd_plan(a) -> int:
    from experiments import config
    from experiments.plan import plan_text

    text, _missing = plan_text(config.load(a.exp, a.set or []), a.store)
    print(text)
    return 0


def cmd_merge(a) -> int:
    from experiments.folds import merge_prediction_csvs

    out = merge_prediction_csvs(a.csv, a.out)
    print(f"merged {len(a.csv)} fold prediction(s) by CCC centering: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="emocache", description=__doc__)
    p.add_argument("--version", action="version", version=f"emocache {_version()}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show third-party logs (TensorFlow Lite, absl, Dask) that are off by default")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser, metavar="VERB")

    f = sub.add_parser("features", help="featurize a corpus into the store (Dask, one task per video)")
    f.add_argument("--input", required=True, help="folder, dataset root or manifest .jsonl")
    f.add_argument("--store", required=True,
                   help="feature store folder (created if missing; re-runs skip finished videos)")
    f.add_argument("--dataset", type=_dataset,
                   help="adapter: generic, demo, ravdess, cremad, emodb, affwild2, hume, labelled-csv "
                        "(default: demo for a demo corpus, else generic)")
    f.add_argument("--name", help="dataset manifest name in the store (default: the adapter name)")
    f.add_argument("--extractors", default="faces,mesh,fer,logmel,mfcc",
                   help="comma-separated extractor names (default: %(default)s)")
    f.add_argument("--param", action="append", metavar="EXTRACTOR.FIELD=VALUE",
                   help="an extractor parameter (repeatable; part of the feature key)")
    f.add_argument("--workers", type=_workers,
                   help="local worker processes, >= 1 (default: one per core; ignored with --scheduler)")
    f.add_argument("--scheduler", help="tcp://host:port (or a scheduler file) of an existing Dask cluster")
    f.add_argument("--cluster", choices=["slurm"],
                   help="start the workers as SLURM jobs (dask-jobqueue; see README 'On a cluster')")
    f.add_argument("--cluster-config", metavar="FILE.yaml",
                   help="the `slurm:` block: cores, memory, walltime, queue, gpu, ... (with --cluster)")
    f.add_argument("--tls-ca", help="CA certificate (PEM) for a tls:// scheduler")
    f.add_argument("--tls-cert", help="this client's certificate (PEM), signed by that CA")
    f.add_argument("--tls-key", help="this client's private key (PEM)")
    f.add_argument("--shard", help="i/n: this job's deterministic share of the videos")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(fn=cmd_features)

    j = sub.add_parser("slurm-script", help="write an sbatch job-array script: one `features --shard i/N` per task")
    j.add_argument("--shards", type=_workers, required=True, help="array tasks N (>= 1)")
    j.add_argument("--out", default="emocache-array.sh", help="script to write (default: %(default)s)")
    j.add_argument("--cluster-config", metavar="FILE.yaml", help="the `slurm:` block (resources per task)")
    j.add_argument("--input", required=True, help="as for features")
    j.add_argument("--store", required=True, help="as for features: every task writes into it")
    j.add_argument("--dataset", type=_dataset, help="as for features")
    j.add_argument("--name", help="as for features")
    j.add_argument("--extractors", default="faces,mesh,fer,logmel,mfcc", help="as for features")
    j.add_argument("--param", action="append", metavar="EXTRACTOR.FIELD=VALUE", help="as for features")
    j.set_defaults(fn=cmd_slurm_script)

    v = sub.add_parser("verify", help="read every finished entry and check it")
    v.add_argument("--store", required=True, type=_store, help="feature store folder to check")
    v.add_argument("--repair", action="store_true",
                   help="retire damaged videos (tombstone line, folder kept aside) so `features` redoes them")
    v.set_defaults(fn=cmd_verify)

    e = sub.add_parser("export", help="copy one feature key to HDF5")
    e.add_argument("--store", required=True, type=_store, help="feature store folder")
    e.add_argument("--key", required=True, help="EXTRACTOR or EXTRACTOR/KEY")
    e.add_argument("--h5", required=True, help="HDF5 file to write")
    e.set_defaults(fn=cmd_export)

    s = sub.add_parser("ls", help="keys, videos, frames, failures, disk use")
    s.add_argument("--store", required=True, type=_store, help="feature store folder")
    s.set_defaults(fn=cmd_ls)

    d = sub.add_parser("demo-data", help="write the synthetic audio-visual demo corpus")
    d.add_argument("--out", required=True, help="folder to write the corpus to")
    d.add_argument("--n", type=int, default=16, help="videos (default: %(default)s)")
    d.add_argument("--seconds", type=float, default=20.0, help="seconds per video (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    d.set_defaults(fn=cmd_demo_data)

    t = sub.add_parser("train", help="train a study on cached features")
    t.add_argument("--exp", type=_study, help="study name (see `emocache studies`) or a YAML path")
    t.add_argument("--store", required=True, type=_store, help="feature store the study reads")
    t.add_argument("--runs", default="runs", help="runs root; the run goes to RUNS/<study>/<stamp> "
                                                  "(default: %(default)s)")
    t.add_argument("--set", action="append", metavar="A.B=C", help="config override (repeatable)")
    t.add_argument("--resume", help="a run dir to continue from its last checkpoint")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    t.add_argument("--ablate", action="store_true",
                   help="also fit each modality alone (same recipe): fusion beside them in report.md, "
                        "bootstrap 95%% CIs, a flag when fusion does not beat its best modality")
    t.add_argument("--seeds", metavar="S,S,...|N",
                   help="run once per seed (0,1,2; or N = seeds 0..N-1) into RUN/seed-<s>/; report.md: mean ± sd")
    t.set_defaults(fn=cmd_train)

    st = sub.add_parser("studies", help="the studies that ship: name, task, extractors, description")
    st.set_defaults(fn=cmd_studies)

    pl = sub.add_parser("plan", help="every feature key a study needs, which exist, the command for the rest")
    pl.add_argument("--exp", required=True, type=_study, help="study name (see `emocache studies`) or a YAML path")
    pl.add_argument("--store", required=True, help="feature store folder (may not exist yet)")
    pl.add_argument("--set", action="append", metavar="A.B=C", help="config override (repeatable)")
    pl.set_defaults(fn=cmd_plan)

    r = sub.add_parser("predict", help="featurize one video and predict with a trained run")
    r.add_argument("video", help="the media file to predict")
    r.add_argument("--run", required=True, help="a finished run folder (runs/<study>/<stamp>); a cross-validated "
                   "one (folds.test=all) predicts with every fold model, merged")
    r.add_argument("--out", help="folder for the CSV and PNG (default: RUN/predict)")
    r.add_argument("--store", help="store to cache this video's features in (default: a temp one)")
    r.set_defaults(fn=cmd_predict)
    m = sub.add_parser("merge", help="merge one video's fold-model predictions by CCC centering")
    m.add_argument("csv", nargs="+", help="prediction CSVs of the same video from several fold runs")
    m.add_argument("--out", required=True, help="merged CSV to write")
    m.set_defaults(fn=cmd_merge)
    return p


def parse(argv=None):
    """Parse and check what can be checked before any work starts (exit 2 on a user error)."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.verb == "train" and not a.exp and not a.resume:
        p.exit(2, "emocache train: give --exp STUDY (see `emocache studies`) or --resume RUN_DIR\n")
    return a


def configure_logging(verbose: bool) -> None:
    """Quiet by default, set before anything imports mediapipe or starts a worker (workers
    inherit the environment): featurize.quiet keeps TFLite/absl banners off fd 2 unless
    EMOCACHE_VERBOSE; Dask's own INFO lines stay at WARNING unless -v. Why WARNING is set
    here: distributed's default is INFO, and on Ctrl-C of a SLURM run the cancelled jobs'
    comms closing printed `distributed.batched - INFO - Batched Comm Closed` with a
    traceback under the CLI's one-line message (CI, 2026-12-03). Through dask's config
    (DASK_LOGGING__DISTRIBUTED, which the workers inherit too): importing distributed sets its
    logger's level from that config, so a setLevel made before the import was undone (the
    same traceback again in CI later that day)."""
    import logging

    from featurize.quiet import VERBOSE_ENV

    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if verbose else "warning")
    logging.getLogger("distributed").setLevel(logging.INFO if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "emocache-numba"))
    from store.writer import no_world_write

    no_world_write()
    a = parse(argv)
    configure_logging(a.verbose)
    try:
        return a.fn(a)
    except InputError as e:
        print(f"emocache {a.verb}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from store.writer import disk_full_error, is_disk_full

        if not is_disk_full(e):
            raise
        print(f"emocache {a.verb}: {disk_full_error(e.filename or a.__dict__.get('store', '?'), e)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emocache {a.verb}: interrupted; finished videos are kept, re-run to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
