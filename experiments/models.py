"""The heads a study can name: how each is built from the corpus widths and the config, and
which batch tensors it is called on, in which order.

A head is one torch-only module in ``heads/`` plus ONE registration here (or in a module of
your own, imported before training):

    @HEADS.register("mine", batch="split", call=lambda model, b: model(b["x"][0], b["masks"][0]))
    def build_mine(inputs: HeadInputs, **args):
        from heads.mine import Mine
        return Mine(inputs.dims[0], inputs.n_outputs, **args)

``args`` are the study's ``head.args``. ``batch`` says which batch the clip tasks give it:
``split`` (one frame sequence + mask per modality: ``b["x"]``, ``b["masks"]``), ``concat`` (the
modalities joined into one sequence: ``b["x"][0]``, ``b["masks"][0]``) or ``segments`` (pooled
tokens per modality ``b["x"]`` and ``b["seg_mask"]``). The frames task always gives windows per
modality (``b["x"]``). ``call(model, batch)`` returns the head's output: a tensor, or a tuple
whose first item is the prediction (AV-CPNet's extra uni-modal logits follow).

``single`` says how the study's head fits ONE modality alone (``emocache train --ablate``,
experiments.ablate): ``"self"`` when the head takes a single modality as it is (same name and
args: eri, sequence), or ``single(cfg, index) -> (head name, head args)`` naming the registered
head that fits the modality at ``index`` of the study's ``features`` with the same sizes (lfan:
that modality's own TCN branch and the regressor, without the fusion; avcpnet: a transformer of
the same width over the same pooled segment tokens). Left out (None), a head refuses ablations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from featurize.registry import Registry
from store.errors import InputError

BATCH_FORMS = ("split", "concat", "segments")


@dataclass(frozen=True)
class HeadInputs:
    """What a builder may know about its inputs (no labels, no data)."""
    dims: list            # width of each modality, in the study's `features` order
    widths: list          # per modality: the width of each of its features, in config order
    n_outputs: int        # targets (regression) or classes (classification)
    segments: int         # data.segments: tokens per clip for `segments` heads


@dataclass(frozen=True)
class Head:
    name: str
    build: Callable       # (HeadInputs, **head.args) -> nn.Module
    call: Callable        # (model, batch dict) -> output
    batch: str            # one of BATCH_FORMS
    single: str | Callable | None = None   # how one modality alone is fitted (module docstring)


def _entry(name, build, *, call, batch="split", single=None):
    if batch not in BATCH_FORMS:
        raise ValueError(f"head {name!r}: batch must be one of {BATCH_FORMS}, not {batch!r}")
    if not (single is None or single == "self" or callable(single)):
        raise ValueError(f"head {name!r}: single must be 'self', a callable or None, not {single!r}")
    return Head(name, build, call, batch, single)


HEADS = Registry("head", entry=_entry)


def head_inputs(cfg, corpus, n_outputs: int) -> HeadInputs:
    """The widths the head sees: a modality re-cut into tokens (data.recut) is `width` wide."""
    recut = cfg.data.recut or {}
    dims, widths = [], []
    for name, m in corpus.modalities.items():
        if name in recut:
            dims.append(int(recut[name][1]))
            widths.append([int(recut[name][1])])
        else:
            dims.append(m.x.shape[1])
            widths.append(list(m.widths))
    return HeadInputs(dims, widths, n_outputs, cfg.data.segments)


def build_head(cfg, inputs: HeadInputs):
    """The study's head as an nn.Module; a constructor that refuses its args is a config error."""
    head = HEADS.get(cfg.head.name)
    try:
        return head.build(inputs, **dict(cfg.head.args))
    except (TypeError, ValueError) as e:
        raise InputError("<config>", "bad_config", f"head {cfg.head.name!r}: {e}",
                         fix="check head.args against the head's constructor (heads/)") from None


def single_head(cfg, modality: str) -> tuple[str, dict]:
    """(head name, head args) that fit ``modality`` of the study alone, from the study head's
    registration (``single``): the one place an ablation's head is chosen."""
    head = HEADS.get(cfg.head.name)
    names = list(cfg.features)
    if modality not in names:
        raise InputError("<config>", "bad_config", f"no modality {modality!r} in the study",
                         fix=f"one of {names}")
    if head.single is None:
        raise InputError("<config>", "bad_config", f"head {head.name!r} has no single-modality form",
                         fix=f"register it with single='self' or single=callable (experiments/models.py)")
    if head.single == "self":
        return head.name, dict(cfg.head.args)
    name, args = head.single(cfg, names.index(modality))
    HEADS.get(name)
    return name, dict(args)


def _defaults(cls) -> dict:
    import inspect

    return {k: p.default for k, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}


# ----------------------------------------------------------------------------- the built-in heads


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise InputError("<config>", "bad_config", message, fix="see the study's `features` modalities")


def _lfan_single(cfg, index: int):
    """The modality's own branch as in the fusion (visual_channels for the leader, its
    audio_channels for a follower), kernel, dropout and output squashing kept; no fusion."""
    from heads.lfan import LeaderFollower

    args = {**_defaults(LeaderFollower), **dict(cfg.head.args)}
    channels = args["visual_channels"]
    if index > 0:
        channels = args["audio_channels"]
        if channels and isinstance(channels[0], (list, tuple)):
            channels = channels[index - 1]
    keep = {k: args[k] for k in ("kernel_size", "dropout", "dropout_mode", "tanh_output")}
    if args.get("compat") == "reference":
        keep["tanh_output"] = False
    return "tcn", {"channels": list(channels), **keep}


@HEADS.register("lfan", batch="split", single=_lfan_single,
                call=lambda model, b: model(b["x"][0], b["x"][1:]))
def build_lfan(inputs: HeadInputs, **args):
    from heads.lfan import LeaderFollower

    _need(len(inputs.dims) >= 2, "head lfan needs a visual and at least one audio modality")
    return LeaderFollower(inputs.dims[0], inputs.dims[1:], n_outputs=inputs.n_outputs, **args)


def _call_eri(model, b):
    xs, masks = b["x"], b["masks"]
    audio = len(xs) > 1
    return model(xs[0], xs[1] if audio else None, masks[0], masks[1] if audio else None)


@HEADS.register("eri", batch="split", single="self", call=_call_eri)
def build_eri(inputs: HeadInputs, **args):
    from heads.eri import ERIModel

    if args.get("local_dim") == "auto":
        # the last feature of the visual modality is the "local" one (landmarks / AUs)
        widths = inputs.widths[0]
        args["local_dim"] = widths[-1] if len(widths) > 1 else 0
    d = inputs.dims
    return ERIModel(d[0], d[1] if len(d) > 1 else None, n_outputs=inputs.n_outputs, **args)


def _avcpnet_single(cfg, index: int):
    """A transformer of the same width, heads and dropout over the same pooled segment tokens
    of one modality, as many blocks as the pyramid has levels, mean-pooled."""
    import math

    from heads.avcpnet import AVCPNet

    args = {**_defaults(AVCPNet), **dict(cfg.head.args)}
    depth = args.get("n_levels") or max(1, math.ceil(math.log2(max(int(cfg.data.segments), 2))))
    return "segment_classifier", {"encoder": "transformer", "hidden": args["d_model"], "heads": args["heads"],
                                  "depth": int(depth), "dropout": args["dropout"], "pool": "mean"}


@HEADS.register("avcpnet", batch="segments", single=_avcpnet_single,
                call=lambda model, b: model(b["x"][0], b["x"][1], b["seg_mask"]))
def build_avcpnet(inputs: HeadInputs, **args):
    from heads.avcpnet import AVCPNet

    _need(len(inputs.dims) == 2, "head avcpnet needs exactly two modalities (visual, audio)")
    return AVCPNet(inputs.dims[0], inputs.dims[1], n_classes=inputs.n_outputs, n_segments=inputs.segments,
                   **args)


@HEADS.register("sequence", batch="concat", single="self", call=lambda model, b: model(b["x"][0], b["masks"][0]))
def build_sequence(inputs: HeadInputs, **args):
    from heads.classifier import SequenceClassifier

    return SequenceClassifier(sum(inputs.dims), inputs.n_outputs, **args)


def _cat_tokens(model, b):
    import torch

    return model(torch.cat(b["x"], -1), b["seg_mask"])


@HEADS.register("segment_classifier", batch="segments", single="self", call=_cat_tokens)
def build_segment_classifier(inputs: HeadInputs, **args):
    """heads.classifier.SequenceClassifier over the pooled segment tokens (every modality's
    joined per segment): the single-stream counterpart of avcpnet on the same tokens."""
    from heads.classifier import SequenceClassifier

    return SequenceClassifier(sum(inputs.dims), inputs.n_outputs, **args)


def _cat_frames(model, b):
    import torch

    return model(torch.cat(b["x"], -1))


@HEADS.register("tcn", batch="split", single="self", call=_cat_frames)
def build_tcn(inputs: HeadInputs, **args):
    """Frames task: one causal TCN over every modality's frames joined, a per-frame regressor
    (heads.tcn.TCNRegressor): lfan's single-stream counterpart, one branch without the fusion."""
    from heads.tcn import TCNRegressor

    return TCNRegressor(sum(inputs.dims), n_outputs=inputs.n_outputs, **args)
