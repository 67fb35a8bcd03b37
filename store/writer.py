"""Atomic, streaming writes into the store.

A video is written into a dot-prefixed temp group, renamed into place, and only then
announced by a manifest line. Readers trust the manifest, so a crash at any step leaves
nothing visible, and a re-run cleans up and rewrites.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

# zarr is imported where it is used (_array_template, _store_metadata): importing it cost each
# process ~1.1 s at load 5 (python -X importtime), on the path to the first video of every
# worker and of every `emocache` command

from . import claims as _claims
from .errors import NOT_APPLICABLE, InputError
from .keys import canonical_json, is_safe_name, key_from_provenance
from .reader import (ERRORS, EXTRACTOR_JSON, MANIFEST, _is_not_applicable, _last_per_id, key_dir,
                     read_jsonl)

TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"\.tmp-(.+)-([0-9a-f]{8})")
CORE_MANIFEST_FIELDS = ("video_id", "frames", "arrays")


def temp_owner(name: str) -> str | None:
    """The video id a temp folder belongs to (None if the name is not a temp folder)."""
    match = _TEMP_NAME.fullmatch(name)
    return match.group(1) if match else None


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def to_jsonable(obj):
    """Attrs and manifest fields go through JSON, never pickle: numpy scalars become plain numbers."""
    return json.loads(json.dumps(obj, default=_json_default))


def append_jsonl(path, rows) -> None:
    """One whole line per row (a dict, or a list of dicts appended together) per call, under an
    exclusive lock, so concurrent writers never interleave; one fsync per call.

    If an earlier writer died mid-line, the torn fragment is closed with a newline first, so
    these lines stay readable on their own.
    """
    rows = [rows] if isinstance(rows, dict) else list(rows)
    if not rows:
        return
    data = "".join(json.dumps(r, ensure_ascii=True, default=_json_default) + "\n" for r in rows).encode("ascii")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def no_world_write() -> None:
    """Mask the world-write bit for this process's new files (a umask of 0, common in
    containers, would make store and run files writable by anyone on a shared machine)."""
    old = os.umask(0o022)
    os.umask(old | 0o002)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path, e: OSError) -> InputError:
    return InputError(path, "disk_full", f"no space left on the device ({e.strerror})",
                      fix="free space (or raise the quota) there, or point --store elsewhere; "
                          "finished videos are kept and a re-run resumes")


def atomic_write(path, fill, binary: bool = False) -> None:
    """The one atomic-write helper: ``fill(fh)`` writes into a temp in the same folder, then
    fsync and rename over ``path`` (``binary``: the file is opened "wb", e.g. for torch.save).
    On any failure (a full disk) the temp is removed and the old file stays as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        with tmp.open("wb" if binary else "w") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise


def atomic_write_text(path, text: str) -> None:
    """``text`` into ``path`` atomically (see atomic_write)."""
    atomic_write(path, lambda fh: fh.write(text))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_name(kind: str, name: str, where) -> None:
    if not is_safe_name(name):
        raise InputError(where, "bad_id", f"{kind} {name!r} is not a safe folder name",
                         fix="pass it through store.sanitize_id and keep the original as original_id")


_TEMPLATES: dict = {}


def _array_template(dtype: np.dtype, trailing: tuple, chunk: int) -> tuple[dict, tuple, object, str]:
    """(zarr's own metadata dict, fill value, chunk encoder, byte order) of an array kind, made
    by zarr once per process and kind (dtype, trailing shape, chunk length).

    Why not zarr per video: building a group and its arrays through zarr's async API (even on
    an in-memory store, on a private event loop, its encoding inline) cost ~11 ms of CPU per
    key and video, 100 ms of a 220 ms file at load 5 (bench_clips profile_inline, 100 speech
    clips, logmel+mfcc: VideoWriter._store 99.9 ms/file), for files whose bytes are the same
    every time but for the shape. Here zarr makes the metadata of each kind of array once;
    per video only `shape` changes (the dict is dumped the way zarr dumps it), and each chunk
    is encoded with the codecs that metadata names (bytes + zstd, zarr's v3 default), padded
    to the whole chunk with the fill value as zarr does. tests/test_store_writer.py checks the
    files are byte for byte what zarr itself writes."""
    sig = (dtype.str, tuple(trailing), int(chunk))
    hit = _TEMPLATES.get(sig)
    if hit is not None:
        return hit
    import zarr
    from numcodecs import Zstd
    from zarr.storage import MemoryStore

    arr = zarr.create_array(store=MemoryStore({}), shape=(0,) + tuple(trailing), chunks=(int(chunk),) + tuple(trailing),
                            dtype=dtype, config={"write_empty_chunks": True}, zarr_format=3,
                            chunk_key_encoding=CHUNK_KEY_ENCODING, compressors=compressor_for(dtype, trailing))
    meta = arr.metadata.to_dict()
    codecs = [c if isinstance(c, dict) else c.to_dict() for c in meta["codecs"]]
    names = [c["name"] for c in codecs]
    if names != ["bytes", "zstd"]:
        raise RuntimeError(f"zarr's default codecs changed to {names}: store/writer.py encodes bytes + zstd only")
    order = "<" if (codecs[0].get("configuration") or {}).get("endian", "little") == "little" else ">"
    zc = codecs[1]["configuration"]
    fill = np.asarray(arr.metadata.fill_value, dtype=dtype)
    blob = _zarr_json({**meta, "shape": [_SHAPE_SENTINEL, *trailing]})
    if blob.count(str(_SHAPE_SENTINEL).encode()) != 1:
        raise RuntimeError(f"zarr.json of {sig} has no single place for the length: {blob[:200]!r}")
    hit = _TEMPLATES[sig] = (blob, fill, Zstd(level=zc["level"], checksum=zc["checksum"]), order)
    return hit


def compressor_for(dtype, trailing: tuple):
    """The zstd codec of an array kind: images (uint8 with two or more trailing axes: face crops,
    frames) at level 1, everything else at zarr's default (level 0, i.e. zstd's 3).

    Why: real 112x112 crops hardly compress (1.30x at level 3, 1.16x at level 1 on the 472-frame
    close-up; 1.85x / 1.70x on the 275-frame clip) and level 3 encoded them at ~100-180 MB/s
    here, ~0.3 ms per frame, the largest piece of a featurize worker's time above the stages
    themselves (decode + faces + fer + audio ~2.4 ms/frame). Level 1 runs ~3x faster for ~10 %
    more bytes on disk; zarr reads either level."""
    from zarr.codecs import ZstdCodec

    dtype = np.dtype(dtype)
    image = dtype == np.uint8 and len(tuple(trailing)) >= 2
    return ZstdCodec(level=1 if image else 0, checksum=False)


# Chunk files as <array>/c.<i>.0 (zarr v3's default encoding with "." as separator), not
# <array>/c/<i>/0: one folder per array instead of three (data) or two (mask, t). mkdir was
# ~90 us here and 1.5 of 8.7 s for 500 speech clips x 2 keys inline (cProfile, load 0.7).
# Stores written before keep their "/" chunks; zarr reads either from each array's zarr.json.
CHUNK_KEY_ENCODING = {"name": "default", "separator": "."}
# The array's length in its zarr.json template: the per-video file is the template with this
# replaced, so the pure-Python indented JSON encoder runs once per kind, not per video.
_SHAPE_SENTINEL = -918273645


def _zarr_json(doc: dict) -> bytes:
    """A zarr.json as zarr writes it (zarr's json_indent 2, NaN allowed)."""
    return json.dumps(doc, indent=2, allow_nan=True).encode()


def _group_json(attrs: dict) -> bytes:
    """The group's zarr.json as zarr's GroupMetadata writes it (keys in its order)."""
    body = json.dumps(attrs, indent=2, allow_nan=True).replace("\n", "\n  ")   # nested one level down
    return ('{\n  "attributes": ' + body + ',\n  "zarr_format": 3,\n  "node_type": "group"\n}').encode()


def _write_file(target: Path, data: bytes) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class VideoBusy(Exception):
    """Another live writer holds this video's claim: wait for it (`KeyHandle.wait`) or move on."""


class FeatureStore:
    """Entry point for writers: one store root, many extractor keys."""

    def __init__(self, root):
        self.root = Path(root)

    def key(self, extractor: str, key: str, provenance: dict) -> "KeyHandle":
        _check_name("extractor", extractor, self.root)
        _check_name("key", key, self.root)
        claimed = key_from_provenance(provenance)
        if claimed != key:
            raise ValueError(f"provenance hashes to {claimed!r}, not {key!r}: build both with make_key")
        path = key_dir(self.root, extractor, key)
        path.mkdir(parents=True, exist_ok=True)
        self._ensure_provenance(path / EXTRACTOR_JSON, provenance)
        return KeyHandle(extractor, key, path)

    @staticmethod
    def _ensure_provenance(target: Path, provenance: dict) -> None:
        """Create-if-absent via link(): two processes racing on one key cannot overwrite each other."""
        text = canonical_json(to_jsonable(provenance))
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
            try:
                tmp.write_text(text)
                os.link(tmp, target)
            except FileExistsError:
                pass
            except OSError as e:
                if is_disk_full(e):
                    raise disk_full_error(target, e) from None
                raise
            finally:
                tmp.unlink(missing_ok=True)
        try:
            existing = canonical_json(json.loads(target.read_text()))
        except ValueError as exc:
            raise InputError(target, "key_conflict", f"unreadable provenance ({exc})",
                             fix="move the key folder away and recompute it") from exc
        if existing != text:
            raise InputError(target, "key_conflict",
                             "this key already holds features made with a different provenance",
                             fix="check the extractor's make_key inputs; never reuse a key for new settings")

    def _dataset_path(self, name: str) -> Path:
        _check_name("dataset name", name, self.root)
        return self.root / "datasets" / name / "manifest.jsonl"

    def write_dataset_manifest(self, name: str, rows: list[dict]) -> Path:
        path = self._dataset_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(json.dumps(r, ensure_ascii=True, default=_json_default) + "\n" for r in rows)
        atomic_write_text(path, body)
        return path

    def read_dataset_manifest(self, name: str) -> list[dict]:
        path = self._dataset_path(name)
        if not path.is_file():
            raise InputError(path, "missing_file", f"no dataset manifest for {name!r}",
                             fix="`emocache features --input DIR --dataset ADAPTER --store ROOT` writes it")
        return read_jsonl(path)


class KeyHandle:
    """One extractor key: the place where videos are begun, committed and failures recorded."""

    def __init__(self, extractor: str, key: str, path: Path):
        self.extractor, self.key, self.path = extractor, key, Path(path)
        self._temps: dict[str, list[str]] | None = None   # video id -> temp folders, listed once

    def __repr__(self):
        return f"KeyHandle({self.extractor!r}, {self.key!r}, {str(self.path)!r})"

    def done_ids(self) -> set[str]:
        return set(_last_per_id(read_jsonl(self.path / MANIFEST)))

    def status(self, video_id):
        if video_id in self.done_ids():
            return "done"
        row = _last_per_id(read_jsonl(self.path / ERRORS)).get(video_id)
        if row is None:
            return None
        return "not_applicable" if _is_not_applicable(row) else "failed"

    def is_done(self, video_id: str) -> bool:
        """Cheap when not done: a manifest line only ever follows the rename into place."""
        return (self.path / video_id).exists() and video_id in self.done_ids()

    def clear_stale_claims(self, done: set[str] | None = None) -> int:
        """Drop dead writers' claims left on finished videos (see claims.clear_stale)."""
        return _claims.clear_stale(self.path, self.done_ids() if done is None else done)

    def claim(self, video_id: str) -> "_claims.Claim | None":
        """This process's claim on `video_id` (None while another live writer holds it)."""
        _check_name("video id", video_id, self.path)
        return _claims.try_claim(self.path, video_id)

    def wait(self, video_id: str, timeout: float | None = None) -> None:
        """Until no live writer holds `video_id`."""
        _claims.wait_claim(self.path, video_id, timeout=timeout)

    def begin_video(self, video_id: str, original_id: str | None = None,
                    chunk_frames: int = 512, claim: "_claims.Claim | None" = None) -> "VideoWriter":
        """Claims the video (or takes the caller's claim), then clears what a crashed writer of
        it left behind; a done video is never touched, a claimed one raises VideoBusy."""
        _check_name("video id", video_id, self.path)
        if int(chunk_frames) < 1:
            raise ValueError("chunk_frames must be >= 1")
        own = claim is None
        if own:
            claim = self.claim(video_id)
            if claim is None:
                raise VideoBusy(f"{self.path / video_id}: another live writer holds it "
                                f"({_claims.CLAIM_PREFIX}{video_id})")
        try:
            if self.is_done(video_id):
                raise FileExistsError(f"{self.path / video_id}: already done (its manifest line exists); "
                                      "check status() before begin_video()")
            self._remove_leftovers(video_id, claim)
            temp = self.path / f"{TEMP_PREFIX}{video_id}-{uuid.uuid4().hex[:8]}"
            try:
                return VideoWriter(self, video_id, original_id, temp, int(chunk_frames), claim)
            except BaseException:
                shutil.rmtree(temp, ignore_errors=True)  # e.g. a full disk mid group creation
                raise
        except BaseException:
            if own:
                claim.release()
            raise

    def _remove_leftovers(self, video_id: str, claim: "_claims.Claim") -> None:
        """Only under this video's claim: any temp folder of it is a dead writer's.

        The key folder is listed once per handle, not once per video (that was quadratic:
        os.listdir of 28,000 names took 10 ms here, i.e. ~9 minutes per run of an eMotions-sized
        corpus with two keys). A temp folder made after
        that listing belongs to a writer that held the claim then; if it died holding it, this
        claim broke its claim (`took_over`), and only then is the folder listed again."""
        final = self.path / video_id
        if final.exists():  # renamed but never announced: a crash between rename and manifest
            shutil.rmtree(final)
        if self._temps is None or claim.took_over:
            temps: dict[str, list[str]] = {}
            for name in os.listdir(self.path):
                owner = temp_owner(name)
                if owner is not None:
                    temps.setdefault(owner, []).append(name)
            if self._temps is None:
                self._temps = temps
            mine = temps.get(video_id, [])
            self._temps.pop(video_id, None)
        else:
            mine = self._temps.pop(video_id, [])
        for name in mine:
            shutil.rmtree(self.path / name, ignore_errors=True)

    def record_error(self, video_id, reason, message, original_id=None) -> None:
        append_jsonl(self.path / ERRORS, {
            "video_id": video_id, "original_id": original_id if original_id is not None else video_id,
            "reason": reason, "message": str(message), "not_applicable": reason in NOT_APPLICABLE,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    def _announce(self, rows) -> None:
        append_jsonl(self.path / MANIFEST, rows)


class Announcer:
    """Videos committed (renamed into place) but announced later, several at once: one fsync of
    each key folder and one manifest append (one fsync) per key for the whole lot.

    Why: per video and key the folder fsync (the rename durable before its line) and the
    manifest's locked, fsynced append cost 23 ms of a 220 ms speech clip at load 5
    (bench_clips profile_inline: fsync dir 13.8, manifest append 9.3 ms/file); a batch of
    short files (featurize/pipeline.py featurize_batch) now pays them once. Nothing a reader
    trusts changes: until `flush` a video is renamed but has no manifest line, i.e. not done,
    the state a crash between rename and announce always left; its claim stays held (handed
    over to the announcer), so no other writer touches it meanwhile, and after a crash the
    next writer breaks the dead claim, removes the unannounced folder and redoes it. A crash
    loses only unannounced, invisible work."""

    def __init__(self):
        self._pending: dict[Path, tuple[KeyHandle, list]] = {}   # key folder -> (handle, [(line, claim)])

    def __len__(self) -> int:
        return sum(len(v) for _h, v in self._pending.values())

    def add(self, handle: KeyHandle, line: dict, claim: "_claims.Claim") -> None:
        self._pending.setdefault(handle.path, (handle, []))[1].append((line, claim))

    def flush(self) -> list[tuple[KeyHandle, dict, BaseException]]:
        """Announce everything pending; returns (handle, manifest line, error) for each video
        whose key could not be announced (its folder stays unannounced: not done, redone next run)."""
        failed = []
        pending, self._pending = self._pending, {}
        for handle, items in pending.values():
            try:
                _fsync_dir(handle.path)   # every rename durable before the lines that announce them
                handle._announce([line for line, _c in items])
            except Exception as e:  # noqa: BLE001  (reported per video by the caller)
                failed += [(handle, line, e) for line, _c in items]
            finally:
                for _line, claim in items:
                    claim.release()
        return failed


class VideoWriter:
    """Streams one video's arrays to disk a time-chunk at a time; memory stays at one chunk per array."""

    def __init__(self, handle: KeyHandle, video_id: str, original_id, temp: Path, chunk_frames: int,
                 claim: "_claims.Claim"):
        self.handle, self.video_id, self.temp, self.chunk = handle, video_id, temp, chunk_frames
        self.claim = claim
        self.original_id = original_id if original_id is not None else video_id
        self.attrs: dict = {"original_id": self.original_id}
        temp.mkdir()            # zarr metadata is written once, at commit (final shapes, attrs)
        self._kinds: dict[str, tuple] = {}   # array -> _array_template(...)
        self._dirs: set[str] = set()        # arrays whose folder exists
        self._buffers: dict[str, np.ndarray] = {}
        self._fill = 0          # frames waiting in the buffers
        self._written = 0       # frames already on disk
        self._started = time.monotonic()
        self._closed = False

    @property
    def frames(self) -> int:
        return self._written + self._fill

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._closed:
            self.abort()
        return False

    def _check_open(self):
        if self._closed:
            raise RuntimeError(f"writer for {self.video_id!r} is already committed or aborted")

    def _create(self, arrays: dict[str, np.ndarray]) -> None:
        for name, arr in arrays.items():
            _check_name("array name", name, self.temp)
            if arr.ndim < 1:
                raise ValueError(f"array {name!r} needs a time axis (got a scalar)")
            if arr.dtype.kind not in "biufc":
                raise ValueError(f"array {name!r}: dtype {arr.dtype} is not a fixed-size number or bool")
            trailing = arr.shape[1:]
            dtype = arr.dtype.newbyteorder("=")
            self._kinds[name] = _array_template(dtype, trailing, self.chunk)
            self._buffers[name] = np.empty((self.chunk,) + trailing, dtype=dtype)

    def _store(self, slabs: dict[str, np.ndarray], lo: int, hi: int) -> None:
        """Frames [lo, hi) of every array (lo on a chunk boundary) as zarr chunk files.

        Each chunk is encoded with its array's codecs and written with plain os calls into the
        temp folder, whole chunks padded with the fill value as zarr pads them; the metadata
        (group with attrs, arrays at their final length) follows once, at commit. Before:
        zarr calls per write, ~5-7 ms each on a LocalStore, then one in-memory zarr write per
        write (see _array_template); now a 3 s clip costs its 3 chunk files and 4 zarr.json
        per key. Atomicity is unchanged: all of it lands in the temp folder, renamed into
        place only after the last write."""
        if hi <= lo:
            return
        for name, slab in slabs.items():
            _blob, fill, codec, order = self._kinds[name]
            buf = self._buffers[name]
            dt = buf.dtype.newbyteorder(order)
            for c0 in range(lo, hi, self.chunk):
                part = np.asarray(slab[c0 - lo:min(hi, c0 + self.chunk) - lo], dtype=dt)
                if len(part) < self.chunk:      # the last chunk: zarr stores it whole, padded
                    if part.base is buf and part.ctypes.data == buf.ctypes.data:
                        buf[len(part):] = fill  # our own buffer's head (the commit's flush): pad it
                        part = buf              # in place, no second chunk-sized array
                    else:
                        whole = np.empty((self.chunk,) + buf.shape[1:], dtype=dt)
                        whole[:len(part)] = part
                        whole[len(part):] = fill
                        part = whole
                key = ".".join(["c", str(c0 // self.chunk)] + ["0"] * (buf.ndim - 1))
                _write_file(self._array_dir(name) / key, codec.encode(np.ascontiguousarray(part)))

    def _array_dir(self, name: str) -> Path:
        folder = self.temp / name
        if name not in self._dirs:
            folder.mkdir()
            self._dirs.add(name)
        return folder

    def _store_metadata(self, attrs: dict) -> None:
        """The group's zarr.json (with the attrs) and each array's, at its final length."""
        for name, (blob, _fill, _codec, _order) in self._kinds.items():
            _write_file(self._array_dir(name) / "zarr.json",
                        blob.replace(str(_SHAPE_SENTINEL).encode(), str(self.frames).encode(), 1))
        _write_file(self.temp / "zarr.json", _group_json(attrs))

    def _coerce(self, arrays: dict) -> tuple[dict[str, np.ndarray], int]:
        if not arrays:
            raise ValueError("append() needs at least one array")
        arrays = {n: np.asarray(a) for n, a in arrays.items()}
        if self._kinds and set(arrays) != set(self._kinds):
            raise ValueError(f"append() got arrays {sorted(arrays)}, the first append had {sorted(self._kinds)}")
        lengths = {n: (a.shape[0] if a.ndim else None) for n, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"arrays differ in length along time: {lengths}")
        if not self._kinds:
            self._create(arrays)
        out = {}
        for name, arr in arrays.items():
            buf = self._buffers[name]
            if arr.shape[1:] != buf.shape[1:]:
                raise ValueError(f"array {name!r}: trailing shape {arr.shape[1:]} != first {buf.shape[1:]}")
            if arr.dtype != buf.dtype and not np.can_cast(arr.dtype, buf.dtype, "same_kind"):
                raise ValueError(f"array {name!r}: dtype {arr.dtype} cannot become {buf.dtype}")
            out[name] = arr
        return out, next(iter(lengths.values()))

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Fill the one-chunk buffers; whole chunks go straight to disk, in chunk-aligned writes."""
        self._check_open()
        arrays, n = self._coerce(arrays)
        i = 0
        while i < n:
            if self._fill == 0 and n - i >= self.chunk:
                whole = (n - i) // self.chunk * self.chunk
                self._write({k: a[i:i + whole] for k, a in arrays.items()}, whole)
                i += whole
                continue
            m = min(self.chunk - self._fill, n - i)
            for k, a in arrays.items():
                self._buffers[k][self._fill:self._fill + m] = a[i:i + m]
            self._fill += m
            i += m
            if self._fill == self.chunk:
                self._flush()

    def _flush(self) -> None:
        if self._fill:
            self._write({k: b[:self._fill] for k, b in self._buffers.items()}, self._fill)
            self._fill = 0

    def _write(self, slabs: dict[str, np.ndarray], n: int) -> None:
        lo, hi = self._written, self._written + n
        self._store(slabs, lo, hi)
        self._written = hi
        self.claim.heartbeat()

    def _manifest_line(self, extra: dict | None) -> dict:
        extra = to_jsonable(extra or {})
        clash = [f for f in CORE_MANIFEST_FIELDS if f in extra]
        if clash:
            raise ValueError(f"manifest extras may not set {clash}: the writer records them")
        arrays = {n: [[self.frames, *b.shape[1:]], str(b.dtype)] for n, b in self._buffers.items()}
        line = {"video_id": self.video_id, "original_id": self.original_id, "frames": self.frames,
                "arrays": arrays, "seconds": round(time.monotonic() - self._started, 3)}
        line.update(extra)
        return line

    def commit(self, manifest: dict | None = None, announcer: Announcer | None = None) -> dict:
        """Flush, attrs, rename into place, then the manifest line: the line is what makes it done.

        With an `announcer` the line waits there (with this video's claim) for its flush."""
        self._check_open()
        if not self._kinds:
            raise ValueError(f"nothing was appended for video {self.video_id!r}: append at least once "
                             "(zero frames is fine) so the store knows each array's dtype and shape")
        line = self._manifest_line(manifest)
        self._flush()                    # the last (or only) chunk
        self._store_metadata(to_jsonable(self.attrs))
        final = self.handle.path / self.video_id
        if not self.claim.still_ours():  # our claim was broken (a lease ran out): not ours to finish
            self.abort()
            raise VideoBusy(f"{final}: this writer's claim was taken over; its work is dropped")
        try:
            os.rename(self.temp, final)  # never replaces a finished (non-empty) video folder
        except OSError as e:
            self.abort()
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(f"{final}: finished by another writer; kept as it is") from None
            raise
        self._closed = True
        if announcer is not None:
            announcer.add(self.handle, line, self.claim.handover())
            return line
        _fsync_dir(self.handle.path)  # the rename must be durable before the line that announces it
        try:
            self.handle._announce(line)
        finally:
            self.claim.release()
        return line

    def abort(self) -> None:
        self._closed = True
        self._buffers = {}
        shutil.rmtree(self.temp, ignore_errors=True)
        self.claim.release()
