"""What a study trains on: samples, batches, the head call, the loss, predictions and metrics.

Three task kinds cover the studies; the fit loop (experiments.fit) is the same for all:

- ``frames`` (frames.py): per-frame regression on windows (ABAW2 and the demo). Overlapping
  window predictions are averaged per frame; metrics over all frames of a split concatenated.
- ``clip_regression`` (clips.py): one vector per clip, whole clips batched with padding +
  masks (ERI).
- ``clip_classification`` (clips.py): one class per clip, either pooled segment tokens per
  modality (AV-CPNet) or the frame sequence (a sequence classifier).

A task built with ``labelled=False`` (experiments.predict) has no targets and the same
batching, so a new video is cut and fed to the head exactly as the training videos were.
A new task kind is one ``@TASKS.register("name")`` subclass of ``Task``.
"""
from .base import TASKS, Task, make
from . import clips, frames  # noqa: F401,E402  (register the task kinds)

__all__ = ["TASKS", "Task", "make"]
