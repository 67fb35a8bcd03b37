"""A labelled CSV `path,label,split` (the eMotions case, or any clip-level classification set).

Class names are kept as written; grouping them (e.g. eMotions' polarity) is the experiment's
business, not the adapter's. Relative paths resolve against `root` (default: the CSV's folder).
Extra columns are kept as labels.
"""
from __future__ import annotations

from pathlib import Path

from store.errors import InputError

from .common import ADAPTERS, make_row, read_csv_dicts, require_dir


@ADAPTERS.register("labelled-csv")
def build(input_path, root=None, dataset: str = "labelled-csv", label_name: str = "label") -> list[dict]:
    """`input_path`: the CSV, or a folder holding exactly one `*.csv` (e.g. labels.csv)."""
    path = require_dir(input_path, "labelled CSV", "give the CSV with columns path,label,split")
    if path.is_dir():
        found = sorted(path.glob("*.csv"))
        if len(found) != 1:
            raise InputError(path, "bad_labels", f"expected one .csv in the folder, found {len(found)}",
                             "pass the CSV file itself")
        path = found[0]
    table = read_csv_dicts(path)
    if not table:
        raise InputError(path, "bad_labels", "no rows", "header path,label,split then one line per clip")
    missing = [c for c in ("path", "label") if c not in table[0]]
    if missing:
        raise InputError(path, "bad_labels", f"missing columns {missing} (have {list(table[0])})",
                         "header: path,label,split")
    base = Path(root) if root is not None else path.parent
    rows = []
    for n, r in enumerate(table, 2):
        if not r["path"]:
            raise InputError(path, "bad_labels", f"line {n}: empty path", "every line names a media file")
        media = Path(r["path"])
        media = media if media.is_absolute() else base / media
        labels = {label_name: r["label"]}
        labels.update({k: v for k, v in r.items() if k not in ("path", "label", "split", "group") and v != ""})
        rows.append(make_row(Path(r["path"]).with_suffix("").as_posix(), media, dataset,
                             split=r.get("split"), group=r.get("group") or None, labels=labels))
    return rows
