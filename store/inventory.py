"""`emocache ls`: what the cache holds, at a glance in a terminal."""
from __future__ import annotations

from .reader import features_dir, list_keys, manifest_rows

COLUMNS = ("extractor", "key", "done", "failed", "n/a", "frames", "face", "disk")
LOW_FACE_RATE = 0.5
SHOW_LOW = 10


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def face_rates(root, key: dict) -> dict[str, float]:
    """video_id -> share of frames with a face, from the manifest lines that carry one (faces keys)."""
    return {r["video_id"]: float(r["face_rate"]) for r in manifest_rows(root, key["extractor"], key["key"])
            if isinstance(r.get("face_rate"), (int, float))}


def _median(values) -> float:
    v = sorted(values)
    return v[len(v) // 2]


def _rows(keys: list[dict], rates: list[dict]) -> list[tuple[str, ...]]:
    return [(k["extractor"], k["key"], str(k["n_done"]), str(k["n_failed"]), str(k["n_not_applicable"]),
             f"{k['frames']:,}", f"{100 * _median(r.values()):.0f}%" if r else "-", human_bytes(k["bytes"]))
            for k, r in zip(keys, rates)]


def summary(root) -> str:
    keys = list_keys(root)
    if not keys:
        return f"no feature keys under {features_dir(root)}"
    rates = [face_rates(root, k) for k in keys]
    rows = [COLUMNS] + _rows(keys, rates)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    left = {0, 1}  # names read left-aligned, numbers right-aligned

    def fmt(row):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = [fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]]
    total_bytes = sum(k["bytes"] for k in keys)
    lines.append(f"{len(keys)} key(s), {human_bytes(total_bytes)} under {features_dir(root)}"
                 + ("; face: median share of a video's frames with a face" if any(rates) else ""))
    for k, r in zip(keys, rates):
        low = sorted((rate, v) for v, rate in r.items() if rate < LOW_FACE_RATE)
        for rate, v in low[:SHOW_LOW]:
            lines.append(f"warning: {k['extractor']}/{k['key']} {v}: a face in only {100 * rate:.0f}% of frames")
        if len(low) > SHOW_LOW:
            lines.append(f"warning: ... and {len(low) - SHOW_LOW} more video(s) under "
                         f"{100 * LOW_FACE_RATE:.0f}% in {k['extractor']}/{k['key']}")
    return "\n".join(lines)
