"""`emocache ls`: what the cache holds, at a glance in a terminal."""
from __future__ import annotations

from .reader import features_dir, list_keys

COLUMNS = ("extractor", "key", "done", "failed", "n/a", "frames", "disk")


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _rows(keys: list[dict]) -> list[tuple[str, ...]]:
    return [(k["extractor"], k["key"], str(k["n_done"]), str(k["n_failed"]), str(k["n_not_applicable"]),
             f"{k['frames']:,}", human_bytes(k["bytes"])) for k in keys]


def summary(root) -> str:
    keys = list_keys(root)
    if not keys:
        return f"no feature keys under {features_dir(root)}"
    rows = [COLUMNS] + _rows(keys)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    left = {0, 1}  # names read left-aligned, numbers right-aligned

    def fmt(row):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]
    total_bytes = sum(k["bytes"] for k in keys)
    lines.append(f"{len(keys)} key(s), {human_bytes(total_bytes)} under {features_dir(root)}")
    return "\n".join(lines)
