"""What a study trains on: samples, batches, the head call, the loss, predictions and metrics.

Three task kinds cover the studies; the trainer (train.py) is the same for all of them:

- ``frames``: per-frame regression on 300-frame windows (ABAW2 and the demo). Overlapping
  window predictions are averaged per frame; metrics over all frames of a split concatenated.
- ``clip_regression``: one vector per clip, whole clips batched with padding + masks (ERI).
- ``clip_classification``: one class per clip, either 16 pooled segment tokens per modality
  (AV-CPNet) or the frame sequence (a sequence classifier).

Modalities come in the study's ``features`` order: the first is the grid and the visual /
leader input; the others are the audio inputs in order. A new study is a YAML; a new head
is one entry in HEADS.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from store.errors import InputError

from . import evaluate as E
from . import windows as W
from .config import StudyConfig
from .data import Corpus, parse_target

QUADRANTS = ("pos_high", "neg_high", "neg_low", "pos_low")


def quadrant_of(v: float, a: float) -> str:
    """(valence, arousal) -> quadrant name; 0 counts as positive."""
    if v >= 0:
        return "pos_high" if a >= 0 else "pos_low"
    return "neg_high" if a >= 0 else "neg_low"


def _scaled(x, scale):
    if not scale:
        return x
    lo, hi, nlo, nhi = (float(s) for s in scale)
    return (x - lo) / (hi - lo) * (nhi - nlo) + nlo


def _stat(values: np.ndarray, stat: str) -> float:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return float("nan")
    if stat == "mean":
        return float(v.mean())
    if stat == "median":
        return float(np.median(v))
    if stat == "std":
        return float(v.std())
    if stat == "min":
        return float(v.min())
    if stat == "max":
        return float(v.max())
    if stat.startswith("q") and stat[1:].isdigit():
        return float(np.quantile(v, int(stat[1:]) / 100.0))
    raise InputError("<config>", "bad_labels", f"unknown clip statistic {stat!r}",
                     fix="use mean, median, std, min, max or qNN (e.g. q25)")


# ----------------------------------------------------------------------------- heads


def _dims(corpus: Corpus) -> list[int]:
    return [m.x.shape[1] for m in corpus.modalities.values()]


def _build_lfan(task, args):
    from heads.lfan import LeaderFollower

    d = _dims(task.corpus)
    if len(d) < 2:
        raise InputError("<config>", "bad_labels", "head lfan needs a visual and at least one audio modality")
    return LeaderFollower(d[0], d[1:], n_outputs=task.n_outputs, **args)


def _build_eri(task, args):
    from heads.eri import ERIModel

    d = _dims(task.corpus)
    args = dict(args)
    if args.get("local_dim") == "auto":
        # the last feature of the visual modality is the "local" one (landmarks / AUs)
        widths = next(iter(task.corpus.modalities.values())).widths
        args["local_dim"] = widths[-1] if len(widths) > 1 else 0
    return ERIModel(d[0], d[1] if len(d) > 1 else None, n_outputs=task.n_outputs, **args)


def _build_avcpnet(task, args):
    from heads.avcpnet import AVCPNet

    d = _dims(task.corpus)
    if len(d) != 2:
        raise InputError("<config>", "bad_labels", "head avcpnet needs exactly two modalities (visual, audio)")
    return AVCPNet(d[0], d[1], n_classes=task.n_outputs, n_segments=task.cfg.data.segments, **args)


def _build_sequence(task, args):
    from heads.classifier import SequenceClassifier

    return SequenceClassifier(sum(_dims(task.corpus)), task.n_outputs, **args)


# name -> (builder, input form). Input forms: "windows"/"clips" (frame sequences per
# modality with masks), "segments" (pooled tokens), "concat" (one sequence, modalities joined).
HEADS = {
    "lfan": (_build_lfan, "split"),
    "eri": (_build_eri, "split"),
    "avcpnet": (_build_avcpnet, "segments"),
    "sequence": (_build_sequence, "concat"),
}


def _call(name: str, model: nn.Module, b: dict):
    xs = b["x"]
    if name == "lfan":
        return model(xs[0], xs[1:])
    if name == "eri":
        return model(xs[0], xs[1] if len(xs) > 1 else None, b["masks"][0], b["masks"][1] if len(xs) > 1 else None)
    if name == "avcpnet":
        return model(xs[0], xs[1], b["seg_mask"])
    if name == "sequence":
        return model(xs[0], b["masks"][0])
    raise InputError("<config>", "bad_labels", f"unknown head {name!r}", fix=f"one of {', '.join(HEADS)}")


def pool_frames(x: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean over every ``k`` consecutive steps: [B, T, D] -> [B, ceil(T/k), D].

    Why: a clip-level label needs no 10 ms resolution, and k-fold fewer steps make a
    convolutional head k times cheaper. A pooled step is valid when any of its frames is.
    """
    b, t = mask.shape
    pad = -t % k
    m = torch.nn.functional.pad(mask, (0, pad)).reshape(b, -1, k).to(x.dtype)
    xp = torch.nn.functional.pad(x, (0, 0, 0, pad)).reshape(b, -1, k, x.shape[-1])
    n = m.sum(-1)
    return (xp * m[..., None]).sum(2) / n.clamp_min(1)[..., None], n > 0


# ----------------------------------------------------------------------------- base


class Task:
    kind = ""
    monitor = ""

    def __init__(self, cfg: StudyConfig, corpus: Corpus, roles: dict[str, list[int]], device):
        if cfg.head.name not in HEADS:
            raise InputError("<config>", "bad_labels", f"unknown head {cfg.head.name!r}",
                             fix=f"head.name must be one of {', '.join(HEADS)}")
        self.cfg, self.corpus, self.roles, self.device = cfg, corpus, roles, device
        self.n_outputs = len(cfg.labels.targets)

    def build_model(self) -> nn.Module:
        try:
            return HEADS[self.cfg.head.name][0](self, dict(self.cfg.head.args))
        except (TypeError, ValueError) as e:
            raise InputError("<config>", "bad_labels", f"head {self.cfg.head.name!r}: {e}",
                             fix="check head.args against the head's constructor (heads/)") from None

    def forward(self, model, b):
        return _call(self.cfg.head.name, model, b)

    def n_samples(self, role: str) -> int:
        raise NotImplementedError

    def batch(self, role: str, sel: torch.Tensor) -> dict:
        raise NotImplementedError

    def loss(self, out, b) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, model, role: str):
        raise NotImplementedError

    def metrics(self, pred) -> dict:
        raise NotImplementedError

    def baseline(self, role: str) -> dict:
        raise NotImplementedError

    def write_predictions(self, pred, out_dir: Path, role: str) -> None:
        raise NotImplementedError

    def plot(self, pred, out_dir: Path, role: str) -> None:
        """Optional task-specific figure (traces, scatter, confusion)."""

    def _eval_batches(self, role):
        n, bs = self.n_samples(role), self.cfg.train.eval_batch_size
        for lo in range(0, n, bs):
            yield torch.arange(lo, min(n, lo + bs), device=self.device)


# ----------------------------------------------------------------------------- frames


@dataclass
class FramePred:
    role: str
    videos: list[int]
    frames: torch.Tensor      # [F] global frame indices of the split
    pred: torch.Tensor        # [F, K]
    true: torch.Tensor        # [F, K]
    valid: torch.Tensor       # [F] counts in metrics


class FrameTask(Task):
    """Per-frame regression on windows (ABAW2): window table + one-op gather."""
    kind = "frames"
    monitor = "ccc_mean"

    def __init__(self, cfg, corpus, roles, device):
        super().__init__(cfg, corpus, roles, device)
        if corpus.labels is None:
            raise InputError("<config>", "bad_labels", "task frames needs per-frame labels (labels.source: frames)")
        self.y = _scaled(corpus.labels, cfg.labels.scale)
        self.frame_ok = corpus.frame_valid(cfg.data.mask_no_face)
        table = W.window_table(corpus.lengths, cfg.data.window, cfg.data.hop)
        self.idx, self.valid = {}, {}
        for role, vids in roles.items():
            sub = table.for_videos(vids)
            self.idx[role], self.valid[role] = W.index_tensor(sub, corpus.offsets, cfg.data.window, device)

    def n_samples(self, role):
        return len(self.idx[role])

    def batch(self, role, sel):
        idx, valid = self.idx[role][sel], self.valid[role][sel]
        xs = [W.gather(m.x, idx, valid) for m in self.corpus.modalities.values()]
        y = self.y[idx]
        mask = valid & self.frame_ok[idx]
        return {"x": xs, "y": torch.nan_to_num(y), "mask": mask, "idx": idx, "valid": valid}

    def loss(self, out, b):
        from heads import losses

        name, args = self.cfg.loss.name, self.cfg.loss.args
        if name == "ccc":
            return losses.ccc_loss(out.float(), b["y"], b["mask"], **args)
        if name == "mse":
            return losses.mse_loss(out.float(), b["y"], b["mask"])
        if name == "l1":
            return losses.l1_loss(out.float(), b["y"], b["mask"])
        raise InputError("<config>", "bad_labels", f"loss {name!r} does not fit task frames", fix="ccc, mse or l1")

    @torch.no_grad()
    def predict(self, model, role):
        avg = E.WindowAverager(len(self.corpus.frame_index), self.n_outputs, self.device)
        for sel in self._eval_batches(role):
            b = self.batch(role, sel)
            avg.add(b["idx"], b["valid"], self.forward(model, b).float())   # overlaps averaged per frame
        frames = self.corpus.frames_of(self.roles[role])
        pred, covered = avg.result(frames)
        return FramePred(role, list(self.roles[role]), frames, pred, self.y[frames],
                         self.frame_ok[frames] & covered)

    def _scores(self, pred, true, valid):
        return E.frame_metrics(pred, true, valid, self.cfg.labels.targets)

    def metrics(self, pred: FramePred) -> dict:
        return self._scores(pred.pred, pred.true, pred.valid)

    def train_mean(self) -> torch.Tensor:
        frames = self.corpus.frames_of(self.roles["train"])
        ok = self.frame_ok[frames]
        return self.y[frames][ok].double().mean(0).float()

    def baseline(self, role) -> dict:
        frames = self.corpus.frames_of(self.roles[role])
        const = self.train_mean()[None, :].expand(len(frames), -1)
        out = self._scores(const, self.y[frames], self.frame_ok[frames])
        out["predicts"] = "train mean " + ", ".join(f"{t}={float(v):.4f}"
                                                    for t, v in zip(self.cfg.labels.targets, self.train_mean()))
        return out

    def plot(self, pred: FramePred, out_dir, role):
        from . import report

        vids, pos, out = [], 0, []
        for vi in pred.videos:
            n = int(self.corpus.offsets[vi + 1] - self.corpus.offsets[vi])
            vids.append((vi, pos, n))
            pos += n
        for vi, lo, n in vids[: self.cfg.report.n_traces]:
            g = pred.frames[lo:lo + n].cpu().numpy()
            out.append((self.corpus.video_ids[vi], self.corpus.times[g], pred.pred[lo:lo + n].cpu().numpy(),
                        pred.true[lo:lo + n].cpu().numpy(), pred.valid[lo:lo + n].cpu().numpy()))
        if out:
            report.traces(out, self.cfg.labels.targets, Path(out_dir) / f"traces_{role}.png")

    def write_predictions(self, pred: FramePred, out_dir, role):
        d = Path(out_dir) / "predictions" / role
        d.mkdir(parents=True, exist_ok=True)
        names = self.cfg.labels.targets
        frames = pred.frames.cpu().numpy()
        p, t, v = pred.pred.cpu().numpy(), pred.true.cpu().numpy(), pred.valid.cpu().numpy()
        pos = 0
        for vi in pred.videos:
            n = int(self.corpus.offsets[vi + 1] - self.corpus.offsets[vi])
            sl = slice(pos, pos + n)
            pos += n
            with open(d / f"{self.corpus.video_ids[vi]}.csv", "w", newline="") as f:
                wr = csv.writer(f)
                wr.writerow(["frame", "t"] + [f"pred_{x}" for x in names] + [f"true_{x}" for x in names] + ["valid"])
                for r in range(n):
                    g = frames[sl][r]
                    wr.writerow([int(self.corpus.frame_index[g]), f"{self.corpus.times[g]:.4f}"]
                                + [f"{x:.5f}" for x in p[sl][r]] + [f"{x:.5f}" for x in t[sl][r]]
                                + [int(v[sl][r])])


# ----------------------------------------------------------------------------- clips


@dataclass
class ClipPred:
    role: str
    samples: np.ndarray       # sample indices (into the task's clip table)
    pred: torch.Tensor        # [S, K] (regression) or logits [S, C] (classification)
    true: torch.Tensor        # [S, K] or [S] class indices
    extra: dict


class ClipTask(Task):
    """Clip samples: whole videos or cuts of ``data.clip`` frames; one label per clip."""

    def __init__(self, cfg, corpus, roles, device):
        super().__init__(cfg, corpus, roles, device)
        d = cfg.data
        table = W.clip_table(corpus.lengths, d.clip, d.clip_hop, d.min_clip)
        y = self._targets(table)
        keep = self._keep(y)
        self.table = table.subset(np.flatnonzero(keep))
        self.y_all = torch.as_tensor(y[keep], device=device)
        self.role_rows = {role: np.flatnonzero(np.isin(self.table.video, np.asarray(vids, np.int64)))
                          for role, vids in roles.items()}
        self.form = HEADS[cfg.head.name][1]
        if self.form == "segments":
            self._pool_segments()

    # -- targets
    def _clip_frames_labels(self, table, i) -> np.ndarray:
        lo = int(self.corpus.offsets[table.video[i]] + table.start[i])
        lab = self.corpus.labels[lo: lo + int(table.length[i])].cpu().numpy().astype(np.float64)
        if self.cfg.data.mask_no_face:
            face = self.corpus.face[lo: lo + int(table.length[i])].cpu().numpy()
            lab = np.where(face[:, None], lab, np.nan)
        return lab

    def _targets(self, table) -> np.ndarray:
        raise NotImplementedError

    def _keep(self, y) -> np.ndarray:
        raise NotImplementedError

    def n_samples(self, role):
        return len(self.role_rows[role])

    def _rows(self, role, sel):
        return self.role_rows[role][sel.cpu().numpy()]

    def _seq_batch(self, rows, train: bool):
        d = self.cfg.data
        sub = self.table.subset(rows)
        if train and d.crop and len(sub) and int(sub.length.max()) > d.crop:
            # augmentation: a random `crop`-frame cut of each longer clip (torch RNG: resumable)
            room = np.maximum(sub.length - d.crop, 0)
            shift = (torch.rand(len(sub)).numpy() * (room + 1)).astype(np.int64).clip(max=room)
            sub = W.Table(sub.video, sub.start + shift, np.minimum(sub.length, d.crop))
        width = int(sub.length.max())
        cap = d.max_frames
        if cap and width > cap:
            # long clips are cut to their first `max_frames` frames (memory bound, documented)
            sub = W.Table(sub.video, sub.start, np.minimum(sub.length, cap))
            width = cap
        idx, valid = W.index_tensor(sub, self.corpus.offsets, width, self.device)
        mods = list(self.corpus.modalities.values())
        xs = [W.gather(m.x, idx, valid) for m in mods]
        masks = [valid & m.mask[idx] for m in mods]
        if train and d.noise:
            xs = [x + d.noise * torch.randn_like(x) * mk[..., None].to(x.dtype) for x, mk in zip(xs, masks)]
        if d.frame_pool > 1:
            pooled = [pool_frames(x, mk, d.frame_pool) for x, mk in zip(xs, masks)]
            xs, masks = [p[0] for p in pooled], [p[1] for p in pooled]
            valid = pool_frames(valid[..., None].float(), valid, d.frame_pool)[1]
        for mk in masks:   # a clip with no valid frame at all keeps one (zero) step, so attention has a key
            mk[:, 0] |= ~mk.any(1)
        if self.form == "concat":
            xs, masks = [torch.cat(xs, -1)], [valid & torch.stack(masks).all(0)]
            masks[0][:, 0] |= ~masks[0].any(1)
        return {"x": xs, "masks": masks}

    def _pool_segments(self):
        s = self.cfg.data.segments
        toks = {k: [] for k in self.corpus.modalities}
        seg_mask = []
        for i in range(len(self.table)):
            lo = int(self.corpus.offsets[self.table.video[i]] + self.table.start[i])
            hi = lo + int(self.table.length[i])
            ok = torch.ones(s, dtype=torch.bool, device=self.device)
            for k, m in self.corpus.modalities.items():
                t, mk = W.segment_pool(m.x[lo:hi], m.mask[lo:hi], s)
                toks[k].append(t)
                ok &= mk
            ok[0] |= ~ok.any()
            seg_mask.append(ok)
        self.tokens = [torch.stack(v) for v in toks.values()]
        self.seg_mask = torch.stack(seg_mask)

    def batch(self, role, sel, train: bool = True):
        rows = self._rows(role, sel)
        if self.form == "segments":
            r = torch.as_tensor(rows, device=self.device)
            b = {"x": [t[r] for t in self.tokens], "seg_mask": self.seg_mask[r]}
        else:
            b = self._seq_batch(rows, train)
        b["y"] = self.y_all[torch.as_tensor(rows, device=self.device)]
        return b

    @torch.no_grad()
    def predict(self, model, role):
        outs, extra = [], {}
        for sel in self._eval_batches(role):
            o = self.forward(model, self.batch(role, sel, train=False))
            if isinstance(o, tuple):
                for j, name in enumerate(("logits_audio", "logits_visual")[: len(o) - 1]):
                    extra.setdefault(name, []).append(o[j + 1].float())
                o = o[0]
            outs.append(o.float())
        rows = self.role_rows[role]
        k = self.n_outputs_model
        pred = torch.cat(outs) if outs else torch.zeros(0, k, device=self.device)
        extra = {n: torch.cat(v) for n, v in extra.items()}
        return ClipPred(role, rows, pred, self.y_all[torch.as_tensor(rows, device=self.device)], extra)

    def _csv_head(self, pred: ClipPred, i: int) -> list:
        j = pred.samples[i]
        return [self.corpus.video_ids[self.table.video[j]], int(self.table.start[j]), int(self.table.length[j])]


class ClipRegressionTask(ClipTask):
    kind = "clip_regression"
    monitor = "apcc"

    @property
    def n_outputs_model(self):
        return self.n_outputs

    def _targets(self, table):
        lab = self.cfg.labels
        y = np.full((len(table), len(lab.targets)), np.nan)
        if lab.source == "clip":
            for i in range(len(table)):
                row = self.corpus.rows[table.video[i]]["labels"]
                for j, name in enumerate(lab.targets):
                    v = row.get(name)
                    y[i, j] = float(v) if v is not None else np.nan
            return _scaled(y, lab.scale).astype(np.float32)
        cols = self.corpus.label_names
        for i in range(len(table)):
            frames = self._clip_frames_labels(table, i)
            for j, t in enumerate(lab.targets):
                stat, args = parse_target(t)
                y[i, j] = _stat(_scaled(frames[:, cols.index(args[0])], lab.scale), stat or "mean")
        return y.astype(np.float32)

    def _keep(self, y):
        return np.isfinite(y).all(1)

    def loss(self, out, b):
        from heads import losses

        name = self.cfg.loss.name
        if name == "mse":
            return losses.mse_loss(out.float(), b["y"])
        if name == "l1":
            return losses.l1_loss(out.float(), b["y"])
        if name == "apcc":
            return losses.apcc_loss(out.float(), b["y"], **self.cfg.loss.args)
        raise InputError("<config>", "bad_labels", f"loss {name!r} does not fit clip_regression",
                         fix="mse, l1 or apcc")

    def _scores(self, pred, true):
        return E.clip_regression_metrics(pred, true, self.cfg.labels.targets)

    def metrics(self, pred):
        return self._scores(pred.pred, pred.true)

    def train_mean(self):
        return self.y_all[torch.as_tensor(self.role_rows["train"], device=self.device)].double().mean(0).float()

    def baseline(self, role):
        true = self.y_all[torch.as_tensor(self.role_rows[role], device=self.device)]
        out = self._scores(self.train_mean()[None, :].expand(len(true), -1), true)
        out["predicts"] = "train mean per target"
        return out

    def plot(self, pred, out_dir, role):
        from . import report

        if len(pred.true):
            report.scatter(pred.pred.cpu().numpy(), pred.true.cpu().numpy(), self.cfg.labels.targets,
                           Path(out_dir) / f"scatter_{role}.png")

    def write_predictions(self, pred, out_dir, role):
        names = self.cfg.labels.targets
        p, t = pred.pred.cpu().numpy(), pred.true.cpu().numpy()
        with open(Path(out_dir) / f"predictions_{role}.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["video_id", "start", "length"] + [f"pred_{x}" for x in names] + [f"true_{x}" for x in names])
            for i in range(len(p)):
                wr.writerow(self._csv_head(pred, i) + [f"{x:.5f}" for x in p[i]] + [f"{x:.5f}" for x in t[i]])


class ClipClassificationTask(ClipTask):
    kind = "clip_classification"
    monitor = "accuracy"

    def __init__(self, cfg, corpus, roles, device):
        if len(cfg.labels.targets) != 1:
            raise InputError("<config>", "bad_labels", "clip_classification takes exactly one target",
                             fix="labels.targets: [emotion] or [quadrant(valence,arousal)]")
        stat, _ = parse_target(cfg.labels.targets[0])
        self.classes = list(cfg.labels.classes or (QUADRANTS if stat == "quadrant" else []))
        if not self.classes:
            raise InputError("<config>", "bad_labels", "clip_classification needs labels.classes",
                             fix="list the class names in logit order")
        super().__init__(cfg, corpus, roles, device)
        self.n_outputs = len(self.classes)

    @property
    def n_outputs_model(self):
        return len(self.classes)

    def _targets(self, table):
        lab = self.cfg.labels
        stat, args = parse_target(lab.targets[0])
        names = []
        for i in range(len(table)):
            if stat == "quadrant":
                frames = self._clip_frames_labels(table, i)
                cols = self.corpus.label_names
                v = _stat(frames[:, cols.index(args[0])], "mean")
                a = _stat(frames[:, cols.index(args[1])], "mean")
                names.append(None if math.isnan(v) or math.isnan(a) else quadrant_of(v, a))
            elif stat is None:
                names.append(self.corpus.rows[table.video[i]]["labels"].get(args[0]))
            else:
                raise InputError("<config>", "bad_labels", f"classification target {lab.targets[0]!r}",
                                 fix="a clip label name or quadrant(valence,arousal)")
        unknown = sorted({str(n) for n in names if n is not None and n not in self.classes})
        if unknown:
            raise InputError("<config>", "bad_labels", f"clip labels {unknown} are not in labels.classes "
                             f"{self.classes}", fix="add them to labels.classes (or fix the labels)")
        return np.array([self.classes.index(n) if n is not None else -1 for n in names], np.int64)

    def _keep(self, y):
        return y >= 0

    def _ce(self, logits, y):
        from heads import losses

        name, args = self.cfg.loss.name, dict(self.cfg.loss.args)
        if name == "ce":
            return losses.ce_loss(logits.float(), y, label_smoothing=float(args.get("label_smoothing", 0.0)))
        if name in ("ep_ce", "pcce"):
            pol = args.get("polarity")
            # a map may name more classes than this study has (e.g. inherited through `extends`)
            if not isinstance(pol, dict) or not set(self.classes) <= set(pol):
                raise InputError("<config>", "bad_labels", f"loss {name} needs loss.args.polarity: "
                                 "{class: polarity} for every class", fix=f"classes: {self.classes}")
            polarity = [pol[c] for c in self.classes]
            if name == "pcce":
                return losses.pcce_loss(logits.float(), y, polarity, float(args.get("lam", 0.5)))
            return losses.ep_ce_loss(logits.float(), y, polarity, args.get("lambdas", 0.5))
        raise InputError("<config>", "bad_labels", f"loss {name!r} does not fit clip_classification",
                         fix="ce, ep_ce or pcce")

    def loss(self, out, b):
        if isinstance(out, tuple):   # AV-CPNet: L(out) + L(out_audio) + L(out_visual)
            return sum(self._ce(o, b["y"]) for o in out)
        return self._ce(out, b["y"])

    def _scores(self, logits_or_labels, true):
        return E.classification_metrics(logits_or_labels, true, self.classes)

    def metrics(self, pred):
        from heads import metrics

        out = self._scores(pred.pred, pred.true)
        for name, logits in pred.extra.items():
            out[f"accuracy_{name.split('_')[1]}_only"] = metrics.accuracy(logits, pred.true)
        return out

    def majority(self) -> int:
        y = self.y_all[torch.as_tensor(self.role_rows["train"], device=self.device)]
        return int(torch.bincount(y, minlength=len(self.classes)).argmax())

    def baseline(self, role):
        true = self.y_all[torch.as_tensor(self.role_rows[role], device=self.device)]
        out = self._scores(torch.full_like(true, self.majority()), true)
        out["predicts"] = f"majority class {self.classes[self.majority()]}"
        return out

    def plot(self, pred, out_dir, role):
        from . import report

        cm = E.classification_metrics(pred.pred, pred.true, self.classes)["confusion"]
        report.confusion(cm, self.classes, Path(out_dir) / f"confusion_{role}.png", title=f"{role} confusion")

    def write_predictions(self, pred, out_dir, role):
        probs = torch.softmax(pred.pred, -1).cpu().numpy()
        with open(Path(out_dir) / f"predictions_{role}.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["video_id", "start", "length", "true", "pred"] + [f"p_{c}" for c in self.classes])
            for i in range(len(probs)):
                wr.writerow(self._csv_head(pred, i) + [self.classes[int(pred.true[i])],
                                                       self.classes[int(probs[i].argmax())]]
                            + [f"{x:.4f}" for x in probs[i]])


TASKS = {"frames": FrameTask, "clip_regression": ClipRegressionTask,
         "clip_classification": ClipClassificationTask}


def make(cfg: StudyConfig, corpus: Corpus, roles: dict[str, list[int]], device) -> Task:
    if cfg.task not in TASKS:
        raise InputError("<config>", "bad_labels", f"unknown task {cfg.task!r}", fix=f"one of {', '.join(TASKS)}")
    task = TASKS[cfg.task](cfg, corpus, roles, device)
    for role in ("train", "val", "test"):
        if task.n_samples(role) == 0:
            raise InputError(f"<{cfg.dataset}>", "bad_labels", f"the {role} split has no samples "
                             f"(videos: {len(roles.get(role, []))})", fix="check folds.test / folds.val and the labels")
    return task
