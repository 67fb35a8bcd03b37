"""The losses a study can name (``loss.name``, with ``loss.args``), and the task kinds each fits.

A loss is one registration:

    @LOSSES.register("mine", tasks=("frames", "clip_regression"))
    def mine(out, batch, task, **args):
        return ((out.float() - batch["y"]) ** 2).mean()

``out`` is the head's prediction (a tuple head's items are scored one by one and summed by
the classification task), ``batch`` the task's batch (``y`` the targets; the frames task also
gives ``mask``, the frames that count), ``task`` the Task (``task.classes`` for classifiers),
``args`` the study's ``loss.args``. The maths lives in heads.losses (torch only).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from featurize.registry import Registry
from store.errors import InputError

TASK_KINDS = ("frames", "clip_regression", "clip_classification")


@dataclass(frozen=True)
class Loss:
    name: str
    fn: Callable          # (out, batch, task, **args) -> scalar tensor
    tasks: tuple          # task kinds it fits


def _entry(name, fn, *, tasks=TASK_KINDS):
    return Loss(name, fn, tuple(tasks))


LOSSES = Registry("loss", entry=_entry)


def loss_for(cfg, kind: str) -> Callable:
    """``(out, batch, task) -> loss`` for the study's loss; refuses one that does not fit the task."""
    entry = LOSSES.get(cfg.loss.name)
    if kind not in entry.tasks:
        fits = [n for n in LOSSES.names() if kind in LOSSES.get(n).tasks]
        raise InputError("<config>", "bad_config", f"loss {cfg.loss.name!r} does not fit task {kind}",
                         fix=f"one of {', '.join(fits)}")
    args = dict(cfg.loss.args)
    try:
        inspect.signature(entry.fn).bind(None, None, None, **args)
    except TypeError as e:
        raise InputError("<config>", "bad_config", f"loss {cfg.loss.name!r}: loss.args {sorted(args)}: {e}",
                         fix=f"see experiments/losses.py `{entry.fn.__name__}` for its arguments") from None

    def loss(out, batch, task):
        return entry.fn(out, batch, task, **args)
    return loss


# ----------------------------------------------------------------------------- the built-in losses


@LOSSES.register("ccc", tasks=("frames",))
def ccc(out, b, task, **args):
    from heads import losses

    return losses.ccc_loss(out.float(), b["y"], b["mask"], **args)


@LOSSES.register("mse", tasks=("frames", "clip_regression"))
def mse(out, b, task):
    from heads import losses

    return losses.mse_loss(out.float(), b["y"], b.get("mask"))


@LOSSES.register("l1", tasks=("frames", "clip_regression"))
def l1(out, b, task):
    from heads import losses

    return losses.l1_loss(out.float(), b["y"], b.get("mask"))


@LOSSES.register("apcc", tasks=("clip_regression",))
def apcc(out, b, task, **args):
    from heads import losses

    return losses.apcc_loss(out.float(), b["y"], **args)


@LOSSES.register("ce", tasks=("clip_classification",))
def ce(out, b, task, label_smoothing=0.0):
    from heads import losses

    return losses.ce_loss(out.float(), b["y"], label_smoothing=float(label_smoothing))


def _polarity(task, name: str, pol) -> list:
    # a map may name more classes than this study has (e.g. inherited through `extends`)
    if not isinstance(pol, dict) or not set(task.classes) <= set(pol):
        raise InputError("<config>", "bad_config", f"loss {name} needs loss.args.polarity: "
                         "{class: polarity} for every class", fix=f"classes: {task.classes}")
    return [pol[c] for c in task.classes]


@LOSSES.register("ep_ce", tasks=("clip_classification",))
def ep_ce(out, b, task, polarity=None, lambdas=0.5):
    from heads import losses

    return losses.ep_ce_loss(out.float(), b["y"], _polarity(task, "ep_ce", polarity), lambdas)


@LOSSES.register("pcce", tasks=("clip_classification",))
def pcce(out, b, task, polarity=None, lam=0.5):
    from heads import losses

    return losses.pcce_loss(out.float(), b["y"], _polarity(task, "pcce", polarity), float(lam))
