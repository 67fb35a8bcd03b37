"""Native-library noise off by default: mediapipe's TensorFlow Lite and absl write straight to
file descriptor 2 (`INFO: Created TensorFlow Lite XNNPACK delegate`, `W0000 ...
inference_feedback_manager.cc:114 ...` once per graph, per worker), where neither `logging`
nor `GLOG_minloglevel`/`TF_CPP_MIN_LOG_LEVEL` reach (tried with mediapipe 0.10.14: both still
print). So the graphs are built, and run once, with fd 2 pointed at /dev/null.

`EMOCACHE_VERBOSE=1` (the CLI's `-v`) leaves stderr alone. Only the calling thread is meant:
another thread's stderr in the same ~0.1 s window is lost too, so this wraps model loading
only, never a video's processing.
"""
from __future__ import annotations

import contextlib
import os
import sys

VERBOSE_ENV = "EMOCACHE_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def native_stderr_off():
    """fd 2 -> /dev/null for the block (no-op when verbose, or when fd 2 cannot be duplicated)."""
    if verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
