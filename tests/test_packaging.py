"""The wheel a user installs: package data declared (the study YAMLs), no setuptools warnings."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_the_study_configs_and_builds_without_package_warnings(tmp_path):
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.skip("setuptools not installed")
    src = tmp_path / "src"      # a copy: the build writes build/ and *.egg-info beside the sources
    src.mkdir()
    for f in ("setup.cfg", "pyproject.toml", "README.md"):
        if (ROOT / f).is_file():
            shutil.copy(ROOT / f, src / f)
    for d in ("experiments", "featurize", "store", "heads"):
        shutil.copytree(ROOT / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                        str(src), "-w", str(tmp_path)], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    log = p.stdout + p.stderr
    # setup.cfg used to list configs/ as package data of a folder that `find:` skips (no
    # __init__.py): one "Package 'experiments.configs' is absent" warning per build step
    assert "is absent from the" not in log
    (wheel,) = tmp_path.glob("emocache-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(Path(n).stem for n in names if n.startswith("experiments/configs/") and n.endswith(".yaml"))
    assert shipped == sorted(p.stem for p in (ROOT / "experiments" / "configs").glob("*.yaml"))
    assert not [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "build", "docs")]
