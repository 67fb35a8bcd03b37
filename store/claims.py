"""One writer per video, across processes and machines: a claim file per (key, video).

A writer creates `.claim-<video_id>` with O_CREAT|O_EXCL (atomic on local file systems and
NFSv3+) naming its host, pid, process start time and a random token, before it writes a
byte of that video. Anyone else finding the file waits or moves on. A claim expires when
its holder is gone:

- same host: the pid is dead, or it is alive but started at another time (pid reused);
- another host: its file was not refreshed for `lease_seconds` (the writer touches it on
  every chunk it writes, see `Claim.heartbeat`), since a pid on another machine cannot be
  asked.

Breaking an expired claim happens under an flock of the key's `.claims.lock` and only
after re-reading the file: two processes that both saw the same dead holder cannot both
break it, and neither can break the fresh claim the other one made meanwhile.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path

CLAIM_PREFIX = ".claim-"
LOCK_NAME = ".claims.lock"
# a claim from another host with no heartbeat for this long is taken over
DEFAULT_LEASE = float(os.environ.get("EMOCACHE_CLAIM_LEASE", "300"))
# an unreadable claim (its writer died between create and write) is broken after this long
TORN_GRACE = 10.0


def claim_owner(name: str) -> str | None:
    """The video id a claim file belongs to (None if the name is not a claim)."""
    return name[len(CLAIM_PREFIX):] if name.startswith(CLAIM_PREFIX) else None


def _hostname() -> str:
    return socket.gethostname()


def _start_time(pid: int) -> str | None:
    """The process start time in clock ticks since boot (/proc/<pid>/stat field 22); None off Linux."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return raw.rsplit(b")", 1)[1].split()[19].decode()


def _pid_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started is not None:
        now = _start_time(pid)
        if now is not None and now != started:
            return False  # the pid was reused by another process
    return True


def read_claim(path) -> dict | None:
    try:
        info = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        info = {}  # torn or empty (the holder died between create and write): judged by its age
    return info if isinstance(info, dict) else {}


def is_stale(path, info: dict | None, lease: float = DEFAULT_LEASE) -> bool:
    """True when the claim's holder is gone (see the module doc)."""
    if info is None:
        return True
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return True
    if info.get("host") == _hostname() and isinstance(info.get("pid"), int):
        return not _pid_alive(info["pid"], info.get("started"))
    if not info:
        return age > min(lease, TORN_GRACE)
    return age > lease


class Claim:
    """A held claim; `release()` removes the file only while it is still ours (token check)."""

    def __init__(self, path: Path, token: str, took_over: bool = False):
        self.path, self.token = path, token
        self.took_over = took_over      # a dead writer's claim was broken for this one
        self._touched = time.monotonic()
        self.held = True

    def still_ours(self) -> bool:
        info = read_claim(self.path)
        return bool(info) and info.get("token") == self.token

    def heartbeat(self, every: float = 5.0) -> None:
        """Refresh the file's mtime (at most every `every` s): other hosts see the writer live."""
        now = time.monotonic()
        if self.held and now - self._touched >= every:
            try:
                os.utime(self.path)
            except OSError:
                pass
            self._touched = now

    def handover(self) -> "Claim":
        """The same claim for whoever finishes the work (store.writer.Announcer); this handle
        then lets go of nothing."""
        other = Claim(self.path, self.token, self.took_over)
        other._touched, other.held = self._touched, self.held
        self.held = False
        return other

    def release(self) -> None:
        if self.held and self.still_ours():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.held = False


def try_claim(key_path, video_id: str, lease: float = DEFAULT_LEASE) -> Claim | None:
    """The claim on `video_id` in key folder `key_path`, or None while a live writer holds it."""
    key_path = Path(key_path)
    path = key_path / f"{CLAIM_PREFIX}{video_id}"
    token = uuid.uuid4().hex
    pid = os.getpid()
    body = json.dumps({"video_id": video_id, "host": _hostname(), "pid": pid,
                       "started": _start_time(pid), "time": time.time(), "token": token}).encode()
    broke = False
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if not _break_if_stale(key_path, path, lease):
                return None
            broke = True
            continue
        try:
            # No fsync: a claim only has to outlive its writer's process, and the page cache
            # does that; after a power loss an empty or missing claim of a dead writer is
            # broken (TORN_GRACE) or absent, the same as one whose writer was SIGKILLed.
            # (It cost ~4-9 ms of wall per key and video on short clips.)
            os.write(fd, body)
        except BaseException:
            os.close(fd)
            os.unlink(path)  # an empty claim would hold the video for TORN_GRACE
            raise
        os.close(fd)
        return Claim(path, token, took_over=broke)
    return None


def _break_if_stale(key_path: Path, path: Path, lease: float) -> bool:
    """Remove an expired claim (under the key's lock, after re-reading it); True if it is gone."""
    info = read_claim(path)
    if info is None:
        return True
    if not is_stale(path, info, lease):
        return False
    fd = os.open(key_path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        again = read_claim(path)
        if again is None:
            return True
        if again.get("token") != info.get("token") or not is_stale(path, again, lease):
            return False  # someone else broke it and claimed afresh meanwhile
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        return True
    finally:
        os.close(fd)


def clear_stale(key_path, video_ids, lease: float = DEFAULT_LEASE) -> int:
    """Remove the stale claims of `video_ids` (finished videos): a writer killed between its
    manifest line and its release leaves a claim that no next writer would ever break, since a
    finished video is never written again. Live claims stay. Returns how many were removed."""
    key_path, n = Path(key_path), 0
    for path in key_path.glob(f"{CLAIM_PREFIX}*"):
        if claim_owner(path.name) in video_ids and _break_if_stale(key_path, path, lease):
            n += 1
    return n


def wait_claim(key_path, video_id: str, lease: float = DEFAULT_LEASE, poll: float = 0.5,
               timeout: float | None = None) -> None:
    """Block until nobody live holds `video_id` (released, or its holder gone)."""
    path = Path(key_path) / f"{CLAIM_PREFIX}{video_id}"
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = read_claim(path)
        if info is None or is_stale(path, info, lease):
            return
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{path}: still held by {info.get('host')} pid {info.get('pid')}")
        time.sleep(poll)
