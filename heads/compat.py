"""Load the published reference checkpoints into our heads.

Shapes are read from the state dict (no config file needed); the renamed state dict is
loaded with ``strict=True`` so a missing or extra weight is an error, not a silent
random init.

abaw2: the reference forward is ``model(frames, audio1_128d, mfcc_39d)``. Ours is
``model(visual, [audio1_128d, mfcc_39d])``: ``audio[j-1]`` is the reference's
``temporal{j}`` branch (any number of ``temporal{j}`` branches is accepted).

A full checkpoint of the published abaw2 module holds two more groups: ``gn1.*``/``gn2.*``
(GroupNorm(8, 32) layers its ``init()`` creates and its forward never uses: dropped, with a
logged note) and ``spatial.*`` (the frozen IR-50 that turns 48x48 crops into the 512-d frame
embedding: with ``spatial_out=path`` written there, without the ``spatial.`` prefix, as a
weights file for the ``backbone`` extractor (``arch=ir50``, ``size=48``); else dropped with a
note). Our head reads the cached embeddings, so neither group is part of it.

eri: ``model(video, audio)`` as in the reference; heads default to 4 (the qkv weight fixes
only heads * dim_head), override with ``heads=``. The published ERI module's state dict holds
only the names in specs/eri.md (its dropout layers have no weights, the ResNet-18 and
OpenFace features were computed beforehand): everything converts, an unknown key is an error.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from .eri import ERIModel
from .lfan import LeaderFollower

__all__ = ["load_reference", "convert_state_dict", "split_reference", "REFERENCES"]

REFERENCES = ("abaw2", "eri")
log = logging.getLogger(__name__)

# parts of a published checkpoint that are not our head: name -> (prefix, what it is)
_NOT_HEAD = {"abaw2": {"gn1": "unused GroupNorm (created in init(), never in forward)",
                       "gn2": "unused GroupNorm (created in init(), never in forward)",
                       "spatial": "the frozen IR-50 face backbone (48x48 crops -> 512-d)"}}


def split_reference(name: str, state_dict: Mapping[str, torch.Tensor]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(the head's keys, {part: its keys without the part prefix}) of a published checkpoint:
    for abaw2 the parts are gn1, gn2 and spatial; eri has none."""
    sd = _strip_prefix(state_dict)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    head = {}
    for k, v in sd.items():
        part = k.split(".", 1)[0]
        if part in _NOT_HEAD.get(name, {}) and "." in k:
            parts.setdefault(part, {})[k.split(".", 1)[1]] = v
        else:
            head[k] = v
    return head, parts


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for prefix in ("module.", "model."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def _indices(sd, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd for m in [rx.match(k)] if m})


def _tcn_config(sd, prefix: str) -> dict:
    levels = _indices(sd, rf"{re.escape(prefix)}\.network\.(\d+)\.conv1\.")
    if not levels or levels != list(range(len(levels))):
        raise KeyError(f"no TCN levels under {prefix!r}")
    v = []
    for i in levels:
        base = f"{prefix}.network.{i}.conv1."
        w = sd.get(base + "weight_v", sd.get(base + "parametrizations.weight.original1"))
        if w is None:
            raise KeyError(f"{base}weight_v missing")
        v.append(w)
    return {"in_dim": v[0].shape[1], "channels": [w.shape[0] for w in v], "kernel_size": v[0].shape[2]}


def _rename_tcn_key(rest: str) -> str | None:
    # network.{i}.net.* duplicates conv1/conv2 in the common TCN code: skip them
    if re.match(r"network\.\d+\.net\.", rest):
        return None
    rest = re.sub(r"\.weight_g$", ".parametrizations.weight.original0", rest)
    return re.sub(r"\.weight_v$", ".parametrizations.weight.original1", rest)


def _convert_abaw2(sd) -> tuple[dict, dict]:
    branches = _indices(sd, r"temporal(\d+)\.network\.")
    if branches != list(range(1, len(branches) + 1)) or not branches:
        raise KeyError(f"expected audio branches temporal1..temporalM, found {branches}")
    vis = _tcn_config(sd, "temporal")
    auds = [_tcn_config(sd, f"temporal{j}") for j in branches]
    config = dict(visual_dim=vis["in_dim"], audio_dims=[a["in_dim"] for a in auds],
                  visual_channels=vis["channels"], audio_channels=[a["channels"] for a in auds],
                  kernel_size=vis["kernel_size"], attn_dim=sd["encoder1.weight"].shape[0],
                  n_outputs=sd["regressor.weight"].shape[0], compat="reference")
    out = {}
    fusion = {"encoder": "key", "encoderQ": "query", "encoderV": "value"}
    for k, v in sd.items():
        m = re.match(r"temporal(\d*)\.(.*)$", k)
        if m:
            target = "visual_tcn" if m.group(1) == "" else f"audio_tcns.{int(m.group(1)) - 1}"
            rest = _rename_tcn_key(m.group(2))
            if rest is not None:
                out[f"{target}.{rest}"] = v
            continue
        m = re.match(r"(encoderQ|encoderV|encoder)(\d+)\.(.*)$", k)
        if m:
            out[f"fusion.{fusion[m.group(1)]}.{int(m.group(2)) - 1}.{m.group(3)}"] = v
        elif k.startswith("ln."):
            out["fusion.norm." + k[3:]] = v
        elif k.startswith("regressor."):
            out[k] = v
        else:
            raise KeyError(f"unexpected key in abaw2 state dict: {k}")
    return config, out


_ERI_LAYER = {
    "0.norm.": "norm1.", "0.fn.to_qkv.": "attn.qkv.", "0.fn.to_out.0.": "attn.proj.",
    "1.norm.": "norm2.", "1.fn.net.0.": "mlp.fc1.", "1.fn.net.3.": "mlp.fc2.",
}


def _convert_eri(sd, heads: int = 4) -> tuple[dict, dict]:
    def branch(suffix):
        rnn = f"rnn{suffix}"
        if f"{rnn}.weight_ih_l0" not in sd:
            return None
        tr = f"transformer{suffix}"
        layers = _indices(sd, rf"{tr}\.layers\.(\d+)\.")
        qkv = sd[f"{tr}.layers.0.0.fn.to_qkv.weight"]
        return dict(in_dim=sd[f"{rnn}.weight_ih_l0"].shape[1], hidden=sd[f"{rnn}.weight_hh_l0"].shape[1],
                    gru_layers=len(_indices(sd, rf"{rnn}\.weight_ih_l(\d+)$")), depth=len(layers),
                    inner=qkv.shape[0] // 3, mlp_dim=sd[f"{tr}.layers.0.1.fn.net.0.weight"].shape[0])

    vid, aud = branch(""), branch("_aud")
    ref = vid or aud
    if ref is None:
        raise KeyError("no rnn / rnn_aud weights: not an ERI state dict")
    if ref["inner"] % heads:
        raise ValueError(f"heads={heads} does not divide the attention width {ref['inner']}")
    config = dict(video_dim=vid and vid["in_dim"], audio_dim=aud and aud["in_dim"],
                  n_outputs=sd["head.2.weight"].shape[0], hidden=ref["hidden"], gru_layers=ref["gru_layers"],
                  depth=ref["depth"], heads=heads, dim_head=ref["inner"] // heads, mlp_dim=ref["mlp_dim"],
                  head_hidden=sd["head.0.weight"].shape[0])
    out = {}
    for k, v in sd.items():
        m = re.match(r"(rnn|reg_token|transformer)(_aud)?(\.(.*))?$", k)
        if m:
            dst = "audio" if m.group(2) else "video"
            kind, rest = m.group(1), m.group(4)
            if kind == "rnn":
                out[f"{dst}.gru.{rest}"] = v
            elif kind == "reg_token":
                out[f"{dst}.token"] = v
            else:
                lm = re.match(r"layers\.(\d+)\.(.*)$", rest or "")
                new = None
                if lm:
                    for old, ours in _ERI_LAYER.items():
                        if lm.group(2).startswith(old):
                            new = f"{dst}.encoder.blocks.{lm.group(1)}.{ours}{lm.group(2)[len(old):]}"
                            break
                if new is None:
                    raise KeyError(f"unexpected key in eri state dict: {k}")
                out[new] = v
        elif re.match(r"head\.[02]\.weight$", k):
            out[k] = v
        else:
            raise KeyError(f"unexpected key in eri state dict: {k}")
    return config, out


def convert_state_dict(name: str, state_dict: Mapping[str, torch.Tensor], **kwargs) -> tuple[dict, dict]:
    """``(constructor kwargs, renamed state dict)`` for a reference checkpoint ``name``."""
    sd, _ = split_reference(name, state_dict)
    if name == "abaw2":
        return _convert_abaw2(sd)
    if name == "eri":
        return _convert_eri(sd, **kwargs)
    raise ValueError(f"unknown reference {name!r}; known: {REFERENCES}")


def load_reference(name: str, state_dict: Mapping[str, torch.Tensor], spatial_out=None, **kwargs) -> nn.Module:
    """Build our head with the reference's shapes and load its weights (strict).

    ``name``: "abaw2" -> :class:`~heads.lfan.LeaderFollower` (compat="reference");
    "eri" -> :class:`~heads.eri.ERIModel`. A full abaw2 checkpoint's ``gn1``/``gn2`` are
    dropped with a logged note; its ``spatial.*`` backbone is written to ``spatial_out``
    (torch.save of a plain state dict, for ``backbone.arch=ir50 backbone.weights=<path>``)
    when given, else dropped with a note. Extra ``kwargs`` go to the constructor (e.g.
    dropout) except ``heads`` for eri, which sets the head split. The module is returned in
    training mode, like any new module: call ``.eval()`` before inference.
    """
    conv_kwargs = {}
    if name == "eri" and "heads" in kwargs:
        conv_kwargs["heads"] = kwargs.pop("heads")
    _, parts = split_reference(name, state_dict) if name in REFERENCES else ({}, {})
    for part, keys in parts.items():
        what = _NOT_HEAD[name][part]
        if part == "spatial" and spatial_out is not None:
            Path(spatial_out).parent.mkdir(parents=True, exist_ok=True)
            torch.save(keys, str(spatial_out))
            log.info("%s checkpoint: %d %s.* tensors (%s) written to %s: load them with the backbone "
                     "extractor (backbone.arch=ir50 backbone.size=48 backbone.weights=%s)",
                     name, len(keys), part, what, spatial_out, spatial_out)
        else:
            log.info("%s checkpoint: %d %s.* tensors ignored: %s%s", name, len(keys), part, what,
                     " (pass spatial_out=PATH to keep them as a backbone weights file)" if part == "spatial" else "")
    config, sd = convert_state_dict(name, state_dict, **conv_kwargs)
    config.update(kwargs)
    model = LeaderFollower(**config) if name == "abaw2" else ERIModel(**config)
    model.load_state_dict(sd, strict=True)
    return model
