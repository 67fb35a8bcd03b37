"""What a run needs to be reproduced: git sha, library versions, machine, command line.

Why: a metrics.json without the code version and the library versions beside it cannot be
compared with anything a month later.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "numpy", "zarr", "numcodecs", "scikit-learn", "librosa", "av", "mediapipe",
             "opencv-contrib-python", "pyyaml", "matplotlib", "emocache")


def git_info(root=ROOT) -> dict:
    """{sha, dirty}; both None outside a git checkout (an installed wheel)."""
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    sha = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def versions(names=LIBRARIES) -> dict:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def machine(device=None) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "hostname": platform.node(), "device": str(device) if device else None}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def collect(device=None, seed=None) -> dict:
    return {"git": git_info(), "versions": versions(), "machine": machine(device), "seed": seed,
            "argv": list(sys.argv)}


def pick_device(device=None):
    """The device a run uses: the one named, else CUDA when there is one, else the CPU."""
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_all(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
