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
import importlib.util
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



class _DeferredModule(type(sys)):
    """A module whose real import runs on its first missing attribute (then it holds the real
    module's names). Not importlib.util.LazyLoader: Python 3.11's import statement reads
    `__spec__` of a module already in sys.modules, which makes a LazyLoader module load at
    once; here `__spec__` is a plain attribute."""

    def __getattr__(self, name):
        real = sys.modules.get(self.__name__)
        if real is self or real is None:
            del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
        self.__dict__.update({k: v for k, v in vars(real).items() if k != "__spec__"})
        return getattr(real, name)


def import_mediapipe():
    """`import mediapipe`, with matplotlib.pyplot deferred until something uses it.

    Why: mediapipe/__init__ imports solutions.drawing_utils, which imports pyplot at its top
    for drawing helpers no extractor calls: 1.05 of mediapipe's 1.80 s import (-X importtime,
    load 5), in every worker that loads faces or mesh, before its first video. The stand-in
    runs pyplot's real import on its first attribute use, so code that does draw still gets
    the real pyplot (and `import matplotlib.pyplot` after that use gets the real module)."""
    if "mediapipe" not in sys.modules and "matplotlib.pyplot" not in sys.modules:
        try:
            spec = importlib.util.find_spec("matplotlib.pyplot")
        except ImportError:
            spec = None
        if spec is not None:
            stub = _DeferredModule("matplotlib.pyplot")
            stub.__spec__ = spec
            sys.modules["matplotlib.pyplot"] = stub
    import mediapipe

    return mediapipe
