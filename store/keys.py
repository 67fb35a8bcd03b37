"""Names in the store: content keys for extractor settings and safe folder names for videos.

A key is derived from everything that changes an extractor's numbers, so a changed
parameter lands in a new folder and old arrays are never overwritten.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

MAX_ID_LEN = 150
# Files that live beside the video folders of a key: an id must never collide with them.
RESERVED_NAMES = frozenset({"extractor.json", "manifest.jsonl", "errors.jsonl", ".lock"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_DOTS = re.compile(r"\.{2,}")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def _sha8(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def sanitize_id(raw: str) -> str:
    """A folder-safe id; a changed or shortened id gets a hash of the raw id so two raws never meet."""
    raw = str(raw)
    clean = _DOTS.sub(".", _UNSAFE.sub("_", raw)).lstrip(".")
    changed = clean != raw or len(clean) > MAX_ID_LEN or not clean or clean.lower() in RESERVED_NAMES
    if not changed:
        return clean
    return f"{clean[:MAX_ID_LEN] or 'id'}-{_sha8(raw)}"


def is_safe_name(name: str) -> bool:
    """True for names that can be a single folder under a key (what sanitize_id produces)."""
    return (
        isinstance(name, str)
        and _SAFE_NAME.fullmatch(name) is not None
        and ".." not in name
        and len(name) <= MAX_ID_LEN + 9
        and name.lower() not in RESERVED_NAMES
    )


def canonical_json(obj) -> str:
    """One spelling per value, so equal settings hash equal."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def make_key(version: str, params: dict, weights_sha256: str | None, libraries: dict[str, str]) -> str:
    """`<version>-<hash8>` over params, weights and library versions: the things that move the numbers."""
    if not is_safe_name(str(version)):
        raise ValueError(f"extractor version {version!r} must be a plain name ([A-Za-z0-9._-], no '..')")
    body = canonical_json({"params": params, "weights_sha256": weights_sha256, "libraries": libraries})
    return f"{version}-{hashlib.sha256(body.encode('ascii')).hexdigest()[:8]}"


def key_from_provenance(provenance: dict) -> str:
    """Recompute the key that a provenance record claims, so a store can be checked against it."""
    missing = [f for f in ("version", "params", "weights_sha256", "libraries") if f not in provenance]
    if missing:
        raise ValueError(f"provenance lacks {missing}: cannot recompute its key")
    return make_key(provenance["version"], provenance["params"], provenance["weights_sha256"],
                    provenance["libraries"])


def file_sha256(path) -> str:
    """Streams the file, so multi-GB weights do not need to fit in memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
