"""`emocache` — the verbs the Makefile wraps: features, verify, export, ls, demo-data, train, predict."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from store.errors import InputError


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


def cmd_features(a) -> int:
    from featurize.pipeline import run_features, write_manifest

    rows = _rows_from_input(a.input, a.dataset)
    name = a.name or (Path(a.input).parent.name if a.input.endswith(".jsonl")
                      else a.dataset or (rows[0].get("dataset") if rows else None) or "generic")
    extractors = [e.strip() for e in a.extractors.split(",") if e.strip()]
    write_manifest(rows, a.store, name)
    summary = run_features(rows, a.store, extractors, overrides=_overrides(a.param),
                           workers=a.workers, scheduler=a.scheduler,
                           shard=_parse_shard(a.shard), progress=not a.quiet)
    return 1 if summary.failed_total else 0


def cmd_verify(a) -> int:
    from store.verify import verify

    problems = verify(a.store)
    for p in problems:
        print(p)
    errors = [p for p in problems if not p.startswith("warning:")]
    print(f"verify {a.store}: {len(errors)} problem(s), {len(problems) - len(errors)} warning(s)")
    return 1 if errors else 0


def cmd_export(a) -> int:
    from store.export import export_h5
    from store.reader import resolve_key

    extractor, _, key = a.key.partition("/")
    key = resolve_key(a.store, extractor, key or None)
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

    if not a.exp and not a.resume:
        raise SystemExit("emocache train: give --exp NAME (or --resume RUN_DIR)")
    run_dir = run_study(a.exp, a.store, a.runs, overrides=a.set or [], resume=a.resume,
                        device=a.device)
    return 0


def cmd_predict(a) -> int:
    from experiments.predict import predict_video

    out = predict_video(a.video, a.run, out_dir=a.out, store_root=a.store)
    print(f"predictions: {out}")
    return 0


def cmd_merge(a) -> int:
    from experiments.folds import merge_prediction_csvs

    out = merge_prediction_csvs(a.csv, a.out)
    print(f"merged {len(a.csv)} fold prediction(s) by CCC centering: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emocache", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)

    f = sub.add_parser("features", help="featurize a corpus into the store (Dask, one task per video)")
    f.add_argument("--input", required=True, help="folder, dataset root or manifest .jsonl")
    f.add_argument("--store", required=True)
    f.add_argument("--dataset",
                   help="adapter: generic, demo, ravdess, cremad, emodb, affwild2, hume, labelled-csv "
                        "(default: demo for a demo corpus, else generic)")
    f.add_argument("--name", help="dataset manifest name in the store (default: the adapter name)")
    f.add_argument("--extractors", default="faces,mesh,fer,logmel,mfcc")
    f.add_argument("--param", action="append", help="EXTRACTOR.FIELD=VALUE (part of the key)")
    f.add_argument("--workers", type=int)
    f.add_argument("--scheduler", help="tcp://host:port of an existing Dask scheduler")
    f.add_argument("--shard", help="i/n: this job's deterministic share of the videos")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(fn=cmd_features)

    v = sub.add_parser("verify", help="read every finished entry and check it")
    v.add_argument("--store", required=True)
    v.set_defaults(fn=cmd_verify)

    e = sub.add_parser("export", help="copy one feature key to HDF5")
    e.add_argument("--store", required=True)
    e.add_argument("--key", required=True, help="EXTRACTOR or EXTRACTOR/KEY")
    e.add_argument("--h5", required=True)
    e.set_defaults(fn=cmd_export)

    s = sub.add_parser("ls", help="keys, videos, frames, failures, disk use")
    s.add_argument("--store", required=True)
    s.set_defaults(fn=cmd_ls)

    d = sub.add_parser("demo-data", help="write the synthetic audio-visual demo corpus")
    d.add_argument("--out", required=True)
    d.add_argument("--n", type=int, default=16)
    d.add_argument("--seconds", type=float, default=20.0)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_demo_data)

    t = sub.add_parser("train", help="train a study on cached features")
    t.add_argument("--exp", help="study name (experiments/configs) or a YAML path")
    t.add_argument("--store", required=True)
    t.add_argument("--runs", default="runs")
    t.add_argument("--set", action="append", help="a.b=c override (repeatable)")
    t.add_argument("--resume", help="a run dir to continue from its last checkpoint")
    t.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    t.set_defaults(fn=cmd_train)

    r = sub.add_parser("predict", help="featurize one video and predict with a trained run")
    r.add_argument("video")
    r.add_argument("--run", required=True)
    r.add_argument("--out")
    r.add_argument("--store", help="store to cache this video's features in (default: a temp one)")
    r.set_defaults(fn=cmd_predict)
    m = sub.add_parser("merge", help="merge one video's fold-model predictions by CCC centering")
    m.add_argument("csv", nargs="+", help="prediction CSVs of the same video from several fold runs")
    m.add_argument("--out", required=True)
    m.set_defaults(fn=cmd_merge)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "emocache-numba"))
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except InputError as e:
        print(f"emocache {a.verb}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emocache {a.verb}: interrupted; finished videos are kept, re-run to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
