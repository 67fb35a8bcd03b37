"""One writer per video: claims between real processes, their expiry, damage seen by readers,
and `verify --repair` retiring exactly the damaged entries."""
import json
import multiprocessing as mp
import os
import shutil
import socket
import time

import numpy as np
import pytest

from store import InputError, read_concat, read_video
from store.claims import CLAIM_PREFIX, try_claim
from store.reader import MANIFEST, read_jsonl
from store.verify import repair, verify
from store.writer import VideoBusy
from tests.test_store_writer import EXT, frames, open_key, tree_digest, write_video


def _hold_claim(root, vid, ready, go):
    """A child that claims a video, begins writing it and waits."""
    handle = open_key(root)
    w = handle.begin_video(vid, chunk_frames=8)
    w.append(frames(0, 20))
    ready.set()
    go.wait(60)
    w.commit()


def test_a_live_writers_claim_and_temp_folder_are_left_alone(tmp_path):
    ctx = mp.get_context("spawn")
    ready, go = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_claim, args=(str(tmp_path), "v", ready, go))
    child.start()
    try:
        assert ready.wait(60)
        handle = open_key(tmp_path)
        temps = [p for p in handle.path.iterdir() if p.name.startswith(".tmp-v-")]
        assert len(temps) == 1
        before = tree_digest(temps[0])
        with pytest.raises(VideoBusy):
            handle.begin_video("v")
        assert handle.claim("v") is None
        assert tree_digest(temps[0]) == before  # the other writer's temp folder is untouched
        go.set()
        handle.wait("v", timeout=60)
        child.join(60)
        assert child.exitcode == 0
        assert handle.is_done("v")
        assert read_video(tmp_path, EXT, handle.key, "v")[0]["data"].shape == (20, 4)
        assert not any(p.name.startswith((".tmp-", CLAIM_PREFIX)) for p in handle.path.iterdir())
    finally:
        go.set()
        child.join(10)


def _claim_and_die(root, vid):
    handle = open_key(root)
    w = handle.begin_video(vid, chunk_frames=8)
    w.append(frames(0, 20))
    os._exit(9)  # SIGKILL-like: no cleanup, the claim file and temp folder stay


def _die_in_child(target, root, vid):
    """Run a writer that dies (os._exit) in its own process; the child, after it exited."""
    child = mp.get_context("spawn").Process(target=target, args=(str(root), vid))
    child.start()
    child.join(60)
    return child


def test_a_dead_writers_claim_expires_and_its_leftovers_are_cleared(tmp_path):
    child = _die_in_child(_claim_and_die, tmp_path, "v")
    handle = open_key(tmp_path)
    info = json.loads((handle.path / f"{CLAIM_PREFIX}v").read_text())
    assert info["pid"] == child.pid and info["host"] == socket.gethostname()
    assert any("its writer is gone" in p and p.startswith("warning:") for p in verify(tmp_path))
    write_video(handle, "v", 12)  # the pid is dead: the claim is broken, the temp removed
    assert read_video(tmp_path, EXT, handle.key, "v")[0]["data"].shape == (12, 4)
    assert sorted(p.name for p in handle.path.iterdir() if p.name.startswith(".")) == [".claims.lock"]


def test_a_temp_left_after_the_handle_listed_its_folder_is_still_cleared(tmp_path):
    """The key folder is listed once per handle; a writer that dies holding a claim after that
    listing leaves a temp folder the listing never saw: breaking its claim lists again."""
    handle = open_key(tmp_path)
    write_video(handle, "first", 12)          # this handle has listed its folder now
    for i in range(3):
        write_video(handle, f"other{i}", 5)
    _die_in_child(_claim_and_die, tmp_path, "v")
    assert [p.name for p in handle.path.iterdir() if p.name.startswith(".tmp-v-")]
    write_video(handle, "v", 12)
    assert not any(p.name.startswith(".tmp-") for p in handle.path.iterdir())
    assert read_video(tmp_path, EXT, handle.key, "v")[0]["data"].shape == (12, 4)


def _fake_claim(handle, vid, host, age):
    path = handle.path / f"{CLAIM_PREFIX}{vid}"
    path.write_text(json.dumps({"video_id": vid, "host": host, "pid": 1, "time": time.time() - age,
                                "token": "x"}))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_another_hosts_claim_holds_while_fresh_and_expires_after_its_lease(tmp_path):
    handle = open_key(tmp_path)
    path = _fake_claim(handle, "v", "some-other-node", age=5)
    assert try_claim(handle.path, "v", lease=60) is None  # heartbeat 5 s ago: alive
    with pytest.raises(TimeoutError, match="some-other-node"):
        handle.wait("v", timeout=0.3)
    os.utime(path, (time.time() - 120, time.time() - 120))
    claim = try_claim(handle.path, "v", lease=60)  # silent for 2 min: gone
    assert claim is not None and claim.still_ours()
    claim.release()
    assert not path.exists()


def test_a_reused_pid_does_not_keep_a_claim_alive(tmp_path):
    handle = open_key(tmp_path)
    path = handle.path / f"{CLAIM_PREFIX}v"
    # our own (live) pid, but a start time that is not this process's: the pid was reused
    path.write_text(json.dumps({"video_id": "v", "host": socket.gethostname(), "pid": os.getpid(),
                                "started": "1", "token": "x"}))
    claim = handle.claim("v")
    assert claim is not None
    claim.release()


def test_commit_onto_a_finished_video_leaves_it_untouched(tmp_path):
    handle = open_key(tmp_path)
    w = handle.begin_video("v", chunk_frames=8)
    w.append(frames(0, 10))
    # another writer finished "v" meanwhile (as when a lease ran out): a non-empty folder
    other = tmp_path / "other"
    write_video(open_key(other), "v", 30)
    shutil.copytree(open_key(other).path / "v", handle.path / "v")
    before = tree_digest(handle.path / "v")
    with pytest.raises(FileExistsError, match="finished by another writer"):
        w.commit()
    assert tree_digest(handle.path / "v") == before
    assert not any(p.name.startswith(".tmp-") for p in handle.path.iterdir())


def test_a_broken_claim_drops_the_late_writers_work(tmp_path):
    handle = open_key(tmp_path)
    w = handle.begin_video("v", chunk_frames=8)
    w.append(frames(0, 10))
    (handle.path / f"{CLAIM_PREFIX}v").write_text(json.dumps({"token": "someone-else", "host": "h"}))
    with pytest.raises(VideoBusy, match="taken over"):
        w.commit()
    assert not (handle.path / "v").exists() and handle.status("v") is None


# --- damage -------------------------------------------------------------------------------

def _three(tmp_path):
    handle = open_key(tmp_path)
    for vid in ("a", "b", "c"):
        write_video(handle, vid, 100, chunk=16)
    return handle


def test_readers_refuse_a_missing_chunk_file_instead_of_returning_zeros(tmp_path):
    handle = _three(tmp_path)
    chunk = handle.path / "b" / "data" / "c.3.0"
    assert chunk.is_file()
    chunk.unlink()
    with pytest.raises(InputError, match="1 of 7 chunk files missing") as e:
        read_video(tmp_path, EXT, handle.key, "b")
    assert e.value.reason == "damaged" and "'b'" in e.value.message and "--repair" in e.value.fix
    with pytest.raises(InputError, match="damaged"):
        read_concat(tmp_path, EXT, handle.key, ["a", "b", "c"])
    assert read_concat(tmp_path, EXT, handle.key, ["a", "c"]).arrays["data"].shape == (200, 4)


@pytest.mark.parametrize("harm", ["shape", "garbled", "no_array", "no_group"])
def test_readers_name_other_damage(tmp_path, harm):
    handle = _three(tmp_path)
    vdir = handle.path / "b"
    if harm == "shape":  # the array metadata says fewer frames than the manifest line
        meta = json.loads((vdir / "data" / "zarr.json").read_text())
        meta["shape"][0] = 64
        (vdir / "data" / "zarr.json").write_text(json.dumps(meta))
    elif harm == "garbled":
        (vdir / "data" / "c.1.0").write_bytes(b"\x00garbage" * 3)
    elif harm == "no_array":
        shutil.rmtree(vdir / "mask")
    else:
        (vdir / "zarr.json").unlink()
    with pytest.raises(InputError) as e:
        read_concat(tmp_path, EXT, handle.key, ["a", "b"])
    assert e.value.reason == "damaged" and "'b'" in e.value.message


def test_repair_retires_exactly_the_damaged_videos_and_deletes_nothing(tmp_path):
    handle = _three(tmp_path)
    (handle.path / "b" / "data" / "c.2.0").unlink()
    good_a = tree_digest(handle.path / "a")
    lines = repair(tmp_path)
    assert len(lines) == 1 and "/b: retired" in lines[0]
    assert handle.done_ids() == {"a", "c"}
    tomb = read_jsonl(handle.path / MANIFEST)[-1]
    assert tomb["video_id"] == "b" and tomb["retired"] and "chunk files missing" in tomb["problems"][0]
    retired = [p for p in handle.path.iterdir() if p.name.startswith(".retired-b-")]
    assert len(retired) == 1 and (retired[0] / "data").is_dir()  # kept aside for inspection
    assert all(p.startswith("warning:") for p in verify(tmp_path))
    assert repair(tmp_path) == []
    write_video(handle, "b", 100, chunk=16)  # what the next features run does
    assert handle.done_ids() == {"a", "b", "c"} and tree_digest(handle.path / "a") == good_a
    np.testing.assert_array_equal(read_video(tmp_path, EXT, handle.key, "b")[0]["t"], frames(0, 100)["t"])


def _commit_and_die(root, vid):
    """Killed after its manifest line, before its release: the narrowest SIGKILL window."""
    handle = open_key(root)
    w = handle.begin_video(vid, chunk_frames=8)
    w.append(frames(0, 20))
    w.claim.release = lambda: None  # the process dies here, so the release never happens
    w.commit()
    os._exit(9)


def test_a_claim_left_on_a_finished_video_is_cleared_and_live_ones_stay(tmp_path):
    _die_in_child(_commit_and_die, tmp_path, "v")
    handle = open_key(tmp_path)
    assert handle.is_done("v") and (handle.path / f"{CLAIM_PREFIX}v").exists()
    write_video(handle, "w", 5)
    live = handle.claim("w")  # this process is alive: its claim on a finished video stays
    try:
        assert handle.clear_stale_claims() == 1
        assert not (handle.path / f"{CLAIM_PREFIX}v").exists()
        assert (handle.path / f"{CLAIM_PREFIX}w").exists()
    finally:
        live.release()
    assert read_video(tmp_path, EXT, handle.key, "v")[0]["data"].shape == (20, 4)


def _commit_unannounced_and_die(root, vid):
    """A batch writer killed after renaming its videos into place, before announcing them."""
    from store.writer import Announcer

    handle = open_key(root)
    announcer = Announcer()
    for v in (vid, vid + "b"):
        w = handle.begin_video(v, chunk_frames=8)
        w.append(frames(0, 20))
        w.commit(announcer=announcer)
    os._exit(9)


def test_announced_batch_is_invisible_and_claimed_until_flush_and_a_crash_before_it_is_redone(tmp_path):
    from store.writer import Announcer

    handle = open_key(tmp_path)
    announcer = Announcer()
    w = handle.begin_video("v", chunk_frames=8)
    w.append(frames(0, 20))
    w.commit(announcer=announcer)
    assert (handle.path / "v").is_dir() and not handle.is_done("v")   # renamed, not done
    assert handle.done_ids() == set()
    with pytest.raises(InputError):                                    # a reader does not see it
        read_video(tmp_path, EXT, handle.key, "v")
    with pytest.raises(VideoBusy):                                     # still claimed
        handle.begin_video("v")
    assert announcer.flush() == []
    assert handle.is_done("v") and handle.claim("v") is not None      # done, claim let go

    child = _die_in_child(_commit_unannounced_and_die, tmp_path, "k")
    assert child.exitcode == 9
    assert (handle.path / "k").is_dir() and not handle.is_done("k")
    assert handle.done_ids() == {"v"}                                  # nothing of the dead batch
    write_video(handle, "k", 12)                                       # dead claim broken, redone
    assert read_video(tmp_path, EXT, handle.key, "k")[0]["data"].shape == (12, 4)
    assert [r["video_id"] for r in read_jsonl(handle.path / MANIFEST)] == ["v", "k"]
