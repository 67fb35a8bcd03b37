"""The Task interface every task kind implements, the task registry and ``make``."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from featurize.registry import Registry
from store.errors import InputError

from ..config import StudyConfig
from ..data import Corpus
from ..losses import loss_for
from ..models import HEADS, build_head, head_inputs

TASKS = Registry("task")


class Task:
    """Samples of one study on one corpus, split into roles (train / val / test, or predict).

    ``labelled`` False: no targets are read (prediction on new videos); ``batch``, ``forward``
    and ``predict`` work as in training, the metrics do not.
    """
    kind = ""
    monitor = ""

    def __init__(self, cfg: StudyConfig, corpus: Corpus, roles: dict[str, list[int]], device,
                 labelled: bool = True):
        self.cfg, self.corpus, self.roles, self.device = cfg, corpus, roles, device
        self.labelled = labelled
        self.head = HEADS.get(cfg.head.name)
        self.n_outputs = len(cfg.labels.targets)
        self._loss = loss_for(cfg, self.kind) if labelled else None

    def build_model(self) -> nn.Module:
        return build_head(self.cfg, head_inputs(self.cfg, self.corpus, self.n_outputs))

    def forward(self, model, b):
        return self.head.call(model, b)

    def n_samples(self, role: str) -> int:
        raise NotImplementedError

    def batch(self, role: str, sel: torch.Tensor) -> dict:
        raise NotImplementedError

    def loss(self, out, b) -> torch.Tensor:
        return self._loss(out, b, self)

    def predict(self, model, role: str):
        raise NotImplementedError

    def metrics(self, pred) -> dict:
        raise NotImplementedError

    def baseline(self, role: str) -> dict:
        raise NotImplementedError

    def write_predictions(self, pred, out_dir: Path, role: str) -> None:
        raise NotImplementedError

    def frame_predictions(self, pred):
        """[N, K] per frame of the corpus (NaN where no sample covers a frame): what predict writes."""
        raise NotImplementedError

    def plot(self, pred, out_dir: Path, role: str) -> None:
        """Optional task-specific figure (traces, scatter, confusion)."""

    def _eval_batches(self, role):
        n, bs = self.n_samples(role), self.cfg.train.eval_batch_size
        for lo in range(0, n, bs):
            yield torch.arange(lo, min(n, lo + bs), device=self.device)


def make(cfg: StudyConfig, corpus: Corpus, roles: dict[str, list[int]], device, labelled: bool = True) -> Task:
    """The study's task; every role it is given must have samples."""
    task = TASKS.get(cfg.task)(cfg, corpus, roles, device, labelled=labelled)
    for role in roles:
        if task.n_samples(role) == 0:
            raise InputError(f"<{cfg.dataset}>", "bad_labels", f"the {role} split has no samples "
                             f"(videos: {len(roles.get(role, []))})", fix="check folds.test / folds.val and the labels")
    return task
