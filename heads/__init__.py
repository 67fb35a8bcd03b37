"""Heads: nn.Modules, losses and metrics for emotion recognition on cached features.

Imports torch only, so every head runs on plain tensors with no feature cache at all.
One module per model family; shared blocks live in :mod:`heads.layers`.
"""
from .avcpnet import AVCPNet
from .classifier import SequenceClassifier
from .compat import load_reference
from .eri import ERIModel
from .lfan import LeaderFollower
from .tcn import TemporalConvNet

__all__ = ["AVCPNet", "ERIModel", "LeaderFollower", "SequenceClassifier", "TemporalConvNet", "load_reference"]
