"""`backbone`: any torch image model from a local file the user names, on crops or frames.

Two ways to name a model (`weights` is always a local path; nothing is downloaded):
- TorchScript (`arch=""`, the default): a `torch.jit.script`/`trace` file saved with
  `torch.jit.save`, loaded with `torch.jit.load`. The way to bring ResNet/IR-50 features.
- a state dict (`arch="<name>"`): `torch.load(weights_only=True)` into an architecture
  registered here with `@ARCHS.register(name)` (`tiny_cnn` for tests, `ir50` = an
  IR-50 in the insightface IResNet-50 key layout, for the ABAW2 reference's face CNN), or
  `arch="torchvision:<model>"` when torchvision is installed.

Input: `source="crops"` (the faces crops; masked crops are not run, zeros there) or
`source="frames"` (whole frames). The field was called `on`, which YAML 1.1 reads as the
boolean true (`{on: frames}` arrived as {True: "frames"}): `on` stays accepted as an alias,
from `--param backbone.on=frames` and from a study YAML (the registry maps the boolean back).
Clip models (`clip` > 0: AV-CPNet's visual tokens, `torchvision:swin3d_t` = Video Swin-T,
`torchvision:r3d_18`): frames are cut into segments of `clip` frames every `clip_hop`
frames (default `clip`, no overlap), the last one padded with its last frame, and the model
gives one row per segment: `t` its centre, `mask` at least half its crops valid (whole frames:
always), group attribute `hop` = clip_hop / fps, so the trainer aligns it like audio.
Each batch goes to the device as uint8, is resized there to `size` x `size` (bilinear,
antialiased; whole frames are not letterboxed), scaled to [0, 1] and normalised with
`mean`/`std`. The model's output (the first one when it returns several) is flattened to
data float16 [T, D]. `device="auto"` uses CUDA when available.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurize.registry import Extractor, Registry, register
from store.errors import InputError

# arch name -> a function `(**kwargs) -> nn.Module` that a state-dict weights file fits
ARCHS = Registry("backbone arch", reason="extractor_error", where=None)


@ARCHS.register("tiny_cnn")
def tiny_cnn(out_dim: int = 16):
    """A two-layer CNN with global pooling: for tests and smoke runs, not for features."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, out_dim, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _iresnet(layers, state_dict=None, dropout: float = 0.0):
    """An insightface-style IResNet (arcface_torch `iresnet` key layout: conv1/bn1/prelu,
    layer1-4 of IBasicBlocks bn1-conv1-bn2-prelu-conv2(stride)-bn3 + downsample.{0,1},
    bn2, fc, features): a face crop -> a 512-d embedding. The fc input fixes the crop size
    (112 px -> 7x7, 48 px -> 3x3 after four stride-2 stages); with `state_dict` it is read
    from fc.weight, so a checkpoint trained on 48x48 crops (ABAW2's reference) loads as is."""
    import math

    from torch import nn

    class IBasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
            self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
            self.prelu = nn.PReLU(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

        def forward(self, x):
            y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
            return y + (x if self.downsample is None else self.downsample(x))

    class IResNet(nn.Module):
        def __init__(self, grid: int):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
            self.prelu = nn.PReLU(64)
            cin = 64
            for i, (n, cout) in enumerate(zip(layers, (64, 128, 256, 512))):
                blocks = [IBasicBlock(cin, cout, 2)] + [IBasicBlock(cout, cout, 1) for _ in range(n - 1)]
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
                cin = cout
            self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(512 * grid * grid, 512)
            self.features = nn.BatchNorm1d(512, eps=1e-5)

        def forward(self, x):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.features(self.fc(self.dropout(self.bn2(x).flatten(1))))

    grid = 7
    if state_dict is not None and "fc.weight" in state_dict:
        grid = math.isqrt(state_dict["fc.weight"].shape[1] // 512)
    return IResNet(grid)


@ARCHS.register("ir50")
def ir50(state_dict=None):
    """IR-50 (IResNet-50, blocks 3-4-14-3), 512-d, for the ABAW2 reference's `spatial` face
    CNN: heads.compat.load_reference("abaw2", sd, spatial_out=path) writes its weights file
    from a full reference checkpoint (a checkpoint whose spatial keys follow another layout
    fails to load here with the key names, not silently). Give the crop size it was trained on
    (backbone.size=48 for ABAW2's 48x48 crops; fc then takes 3x3)."""
    return _iresnet((3, 4, 14, 3), state_dict)


@dataclass(frozen=True)
class BackboneConfig:
    weights: str = ""                 # local file: TorchScript, or a state dict with `arch`
    arch: str = ""                    # "" = TorchScript; a registered name; "torchvision:<name>"
    source: str = "crops"             # "crops" (faces crops) | "frames" (whole frames); alias `on`
    size: int = 112
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    batch: int = 64
    device: str = "auto"              # "auto" | "cpu" | "cuda" | "cuda:N"
    threads: int = 1                  # torch.set_num_threads on CPU
    # clip models (torchvision:r3d_18, torchvision:swin3d_t, or TorchScript on [B,3,T,H,W]):
    clip: int = 0                     # frames per segment; 0 = an image model, one row per frame
    clip_hop: int = 0                 # frames between segment starts; 0 = clip (no overlap)
    strip_head: bool | None = None    # torchvision: classifier (fc/head) -> identity, i.e. the
                                      # embedding; None = for clip models yes, image models no

    def __post_init__(self):
        if self.source not in ("crops", "frames"):
            raise ValueError("source must be 'crops' or 'frames'")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values (std > 0)")
        if self.batch < 1 or self.size < 8:
            raise ValueError("batch must be >= 1 and size >= 8")
        if self.clip < 0 or self.clip_hop < 0 or (self.clip_hop and not self.clip):
            raise ValueError("clip and clip_hop must be >= 0 (clip_hop only with clip)")


def _load(c: BackboneConfig, path: Path, device):
    import torch

    if not c.arch:
        try:
            return torch.jit.load(str(path), map_location=device)
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/ValueError variants
            raise InputError(path, "extractor_error", f"not a TorchScript model ({type(e).__name__}: {e})",
                             "save it with torch.jit.save(torch.jit.script(model), path), or pass "
                             "backbone.arch=<name> for a state dict") from None
    if c.arch.startswith("torchvision:"):
        torchvision = import_torchvision(path)
        try:
            model = torchvision.models.get_model(c.arch.split(":", 1)[1], weights=None)
        except ValueError as e:
            raise InputError(path, "extractor_error", f"arch {c.arch}: {e}",
                             "name a torchvision model, e.g. torchvision:r3d_18, torchvision:swin3d_t, "
                             "torchvision:resnet18") from None
    elif c.arch in ARCHS:
        model = None
    else:
        raise InputError(path, "extractor_error", f"unknown backbone arch {c.arch!r}",
                         f"use one of {ARCHS.names()} or torchvision:<name>, or TorchScript (arch='')")
    from featurize.weights import load_plain

    sd = load_plain(path)  # a pickled model raises unsafe_file, not a load error
    try:
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        if model is None:   # an arch whose shapes follow the file (ir50's fc) takes the state dict
            import inspect

            build = ARCHS.get(c.arch)
            model = build(state_dict=sd) if "state_dict" in inspect.signature(build).parameters else build()
        model.load_state_dict(sd)
    except Exception as e:  # noqa: BLE001
        raise InputError(path, "extractor_error",
                         f"cannot load a {c.arch} state dict ({type(e).__name__}: {e})",
                         "save model.state_dict() with torch.save for that architecture") from None
    strip = c.strip_head if c.strip_head is not None else c.clip > 0
    if strip:
        from torch import nn

        for attr in ("fc", "head", "classifier"):   # resnet/r3d_18: fc; swin3d_t: head
            if isinstance(getattr(model, attr, None), nn.Module):
                setattr(model, attr, nn.Identity())
                break
        else:
            raise InputError(path, "extractor_error", f"strip_head: {c.arch} has no fc/head/classifier",
                             "pass backbone.strip_head=false, or save a model that returns the embedding")
    return model.to(device)


def import_torchvision(path="backbone"):
    """torchvision, also where its compiled ops cannot load.

    Why: the PyPI torchvision 0.28.0 wheel (the release for torch 2.13.0) is a CUDA build;
    beside the CPU torch wheel its `_C` ops cannot load, and its import then stops at
    registering a fake kernel for `torchvision::nms` ("operator ... does not exist"). The
    models need none of those ops: the two schemas it registers unguarded are declared and
    the import retried (calling nms itself would still fail, loudly)."""
    import sys

    try:
        import torchvision
        return torchvision
    except ImportError:
        raise InputError(path, "extractor_error", "torchvision is not installed",
                         "pip install --no-deps torchvision==0.28.0 (the release for torch 2.13.0), "
                         "or save the model as TorchScript") from None
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
    import torch

    for m in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[m]
    global _TV_OPS
    if _TV_OPS is None:
        _TV_OPS = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            _TV_OPS.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision
    return torchvision


_TV_OPS = None


@register
class Backbone(Extractor):
    name = "backbone"
    version = "1"
    Config = BackboneConfig
    input = "crops"                   # the instance says "frames" when config.source == "frames"
    libraries = ("torch",)
    aliases = {"on": "source"}

    def __init__(self, config: BackboneConfig | None = None):
        import torch

        super().__init__(config)
        c = self.config
        self.input = c.source
        self.path = self.weights_file(c)
        if c.device == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            dev = c.device
        self.device = torch.device(dev)
        self.model = _load(c, self.path, self.device)
        self.model.eval()
        self._mean = torch.tensor(c.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(c.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._torch = torch

    @classmethod
    def weights_file(cls, config):
        from featurize.weights import model_path

        if not config.weights:
            raise InputError("backbone", "extractor_error", "no model file named",
                             "pass backbone.weights=/path/to/model.pt (TorchScript or a state dict + arch)")
        return model_path(config.weights, sha256="")

    @classmethod
    def input_kind(cls, config) -> str:
        return config.source

    def _normalise(self, x):
        """uint8 [N, H, W, 3] on the device -> float [N, 3, size, size], resized and normalised."""
        import torch.nn.functional as F

        c = self.config
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (c.size, c.size):
            x = F.interpolate(x, size=(c.size, c.size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self._mean) / self._std

    def _batched(self, items: np.ndarray, per: int, prepare) -> np.ndarray:
        """The model on `per` items at a time (prepare: uint8 device tensor -> model input)."""
        torch = self._torch
        outs = []
        prev = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(self.config.threads)
        try:
            with torch.inference_mode():
                for i in range(0, len(items), per):
                    x = torch.from_numpy(np.ascontiguousarray(items[i:i + per])).to(self.device)
                    y = self.model(prepare(x))
                    if isinstance(y, (tuple, list)):
                        y = y[0]
                    outs.append(y.reshape(len(x), -1).float().cpu().numpy())
        finally:
            torch.set_num_threads(prev)
        return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """RGB uint8 [N,H,W,3] -> float32 [N, D]."""
        return self._batched(images, self.config.batch, self._normalise)

    def embed_clips(self, clips: np.ndarray) -> np.ndarray:
        """RGB uint8 [S, T, H, W, 3] -> float32 [S, D]: a video model on [S, 3, T, size, size]."""
        def prepare(x):
            return self._normalise(x.flatten(0, 1)).unflatten(0, x.shape[:2]).transpose(1, 2)

        per = max(1, self.config.batch // max(1, clips.shape[1]))    # `batch` counts frames
        return self._batched(clips, per, prepare)

    def start(self, info) -> None:
        self._fps = float(getattr(info, "fps", 0) or 0) or 25.0
        self._buf = self._tbuf = self._mbuf = None   # frames from the next segment start on
        self._base = 0                               # frame index of _buf[0]
        self._next = 0                               # frame index of the next segment start

    def _segments(self, final: bool) -> dict[str, np.ndarray]:
        """Every segment whose frames are all here (and, at the end, the rest padded with the
        last frame): t = the segment's centre on the nominal grid, mask = half its crops valid."""
        c = self.config
        hop = c.clip_hop or c.clip
        if self._buf is None:
            return {}
        seen = self._base + len(self._buf)
        starts = []
        while self._next + (1 if final else c.clip) <= seen:
            starts.append(self._next)
            self._next += hop
        if not starts:
            return {}
        idx = np.minimum(np.arange(c.clip)[None] + np.array(starts)[:, None] - self._base, len(self._buf) - 1)
        valid = self._mbuf[idx].mean(1) >= 0.5
        t0 = self._tbuf[np.array(starts) - self._base].astype(np.float64)
        t = t0 + (c.clip - 1) / 2.0 / self._fps
        dim = getattr(self, "_dim", None)
        if valid.any():
            y = self.embed_clips(self._buf[idx[valid]])
            dim = self._dim = y.shape[1]
        elif dim is None:   # learn D once from a dummy clip so shapes stay fixed per video
            dim = self._dim = self.embed_clips(np.zeros((1, c.clip, c.size, c.size, 3), np.uint8)).shape[1]
        data = np.zeros((len(starts), dim), np.float16)
        if valid.any():
            data[valid] = y.astype(np.float16)
        keep = max(0, min(self._next, seen) - self._base)     # frames before the next start are done
        self._buf, self._tbuf, self._mbuf = self._buf[keep:], self._tbuf[keep:], self._mbuf[keep:]
        self._base += keep
        return {"data": data, "mask": valid, "t": t}

    def flush(self) -> dict[str, np.ndarray]:
        if not self.config.clip:
            return {}
        return self._segments(final=True)

    def finish(self) -> dict:
        c = self.config
        if not c.clip:
            return {}
        # the trainer aligns this clock to the label grid by t and hop, like audio
        return {"clip": c.clip, "clip_hop": c.clip_hop or c.clip, "hop": (c.clip_hop or c.clip) / self._fps}

    def process(self, frames: np.ndarray, ctx: dict) -> dict[str, np.ndarray]:
        if self.config.clip:
            n = len(frames)
            mask = np.asarray(ctx.get("mask", np.ones(n, bool)) if self.input == "crops" else np.ones(n, bool),
                              bool)
            t = np.asarray(ctx.get("t", np.arange(n) / self._fps), np.float64)
            if self._buf is None:
                self._buf, self._tbuf, self._mbuf = frames.copy(), t, mask
            else:
                self._buf = np.concatenate([self._buf, frames])
                self._tbuf, self._mbuf = np.concatenate([self._tbuf, t]), np.concatenate([self._mbuf, mask])
            return self._segments(final=False)
        n = len(frames)
        if self.input == "crops":
            mask = np.asarray(ctx.get("mask", np.ones(n, bool)), bool).copy()
        else:
            mask = np.ones(n, bool)
        idx = np.flatnonzero(mask)
        if len(idx) == 0:
            dim = getattr(self, "_dim", None)
            if dim is None:  # learn D once from a dummy image so shapes stay fixed per video
                dim = self._dim = self.embed(np.zeros((1, self.config.size, self.config.size, 3),
                                                      np.uint8)).shape[1]
            return {"data": np.zeros((n, dim), np.float16), "mask": mask}
        y = self.embed(frames[idx])
        self._dim = y.shape[1]
        data = np.zeros((n, y.shape[1]), np.float16)
        data[idx] = y.astype(np.float16)
        return {"data": data, "mask": mask}
