"""Clip tasks: one label per clip (a whole video or a cut of ``data.clip`` frames).

``clip_regression`` (ERI: 7 intensities per clip) and ``clip_classification`` (AV-CPNet,
EmoDB). The batch a head gets follows its registration (experiments.models): frame
sequences with masks per modality (``split``), one joined sequence (``concat``) or pooled
segment tokens (``segments``).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from store.errors import InputError

from .. import evaluate, windows
from ..data import parse_target
from ..targets import class_names, clip_stat, quadrant_of, scaled
from .base import TASKS, Task


@dataclass
class ClipPred:
    role: str
    samples: np.ndarray       # sample indices (into the task's clip table)
    pred: torch.Tensor        # [S, K] (regression) or logits [S, C] (classification)
    true: torch.Tensor        # [S, K] or [S] class indices
    extra: dict


class ClipTask(Task):
    """Clip samples: whole videos or cuts of ``data.clip`` frames; one label per clip."""

    def __init__(self, cfg, corpus, roles, device, labelled=True):
        super().__init__(cfg, corpus, roles, device, labelled)
        d = cfg.data
        table = windows.clip_table(corpus.lengths, d.clip, d.clip_hop, d.min_clip)
        y = self._targets(table) if labelled else self._no_targets(len(table))
        keep = self._keep(y) if labelled else np.ones(len(table), bool)
        self.table = table.subset(np.flatnonzero(keep))
        self.y_all = torch.as_tensor(y[keep], device=device)
        self.role_rows = {role: np.flatnonzero(np.isin(self.table.video, np.asarray(vids, np.int64)))
                          for role, vids in roles.items()}
        self.form = self.head.batch
        _check_recut(cfg, corpus, self.form)
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

    def _no_targets(self, n: int) -> np.ndarray:
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
            sub = windows.Table(sub.video, sub.start + shift, np.minimum(sub.length, d.crop))
        width = int(sub.length.max())
        cap = d.max_frames
        if cap and width > cap:
            # long clips are cut to their first `max_frames` frames (memory bound, documented)
            sub = windows.Table(sub.video, sub.start, np.minimum(sub.length, cap))
            width = cap
        idx, valid = windows.index_tensor(sub, self.corpus.offsets, width, self.device)
        mods = list(self.corpus.modalities.values())
        xs = [windows.gather(m.x, idx, valid) for m in mods]
        masks = [valid & m.mask[idx] for m in mods]
        if train and d.noise:   # in place on the gathered copies: the same ops in the same order, no temporaries
            for x, mk in zip(xs, masks):
                x.add_(torch.randn_like(x).mul_(d.noise).mul_(mk[..., None]))
        if d.frame_pool > 1:
            pooled = [windows.pool_frames(x, mk, d.frame_pool) for x, mk in zip(xs, masks)]
            xs, masks = [p[0] for p in pooled], [p[1] for p in pooled]
            valid = windows.pool_frames(valid[..., None].float(), valid, d.frame_pool)[1]
        for mk in masks:   # a clip with no valid frame at all keeps one (zero) step, so attention has a key
            mk[:, 0] |= ~mk.any(1)
        if train and d.specaug:
            from heads.augment import spec_mask

            xs = [spec_mask(x, mk, **d.specaug) if j == 0 else x for j, (x, mk) in enumerate(zip(xs, masks))]
        for i, name in enumerate(self.corpus.modalities):
            if name in d.recut:          # values re-cut into tokens (the ERI reference's audio)
                tokens, width = d.recut[name]
                xs[i], masks[i] = windows.recut(xs[i], masks[i], int(tokens), int(width))
        if self.form == "concat":
            xs, masks = [torch.cat(xs, -1)], [valid & torch.stack(masks).all(0)]
            masks[0][:, 0] |= ~masks[0].any(1)
        out = {"x": xs, "masks": masks}
        if train and d.mixup and self.kind == "clip_classification":
            from heads.augment import mixup

            mixed = [mixup(x, mk, d.mixup) for x, mk in zip(xs, masks)] if len(xs) == 1 else None
            if mixed:
                out["x"], out["masks"] = [mixed[0][0]], [mixed[0][1]]
                out["mix"] = (mixed[0][2], mixed[0][3])
        return out

    def _pool_segments(self):
        s = self.cfg.data.segments
        toks = {k: [] for k in self.corpus.modalities}
        seg_mask = []
        for i in range(len(self.table)):
            lo = int(self.corpus.offsets[self.table.video[i]] + self.table.start[i])
            hi = lo + int(self.table.length[i])
            ok = torch.ones(s, dtype=torch.bool, device=self.device)
            for k, m in self.corpus.modalities.items():
                t, mk = windows.segment_pool(m.x[lo:hi].float(), m.mask[lo:hi], s)
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
        k = self.n_outputs
        pred = torch.cat(outs) if outs else torch.zeros(0, k, device=self.device)
        extra = {n: torch.cat(v) for n, v in extra.items()}
        return ClipPred(role, rows, pred, self.y_all[torch.as_tensor(rows, device=self.device)], extra)

    def frame_predictions(self, pred: ClipPred) -> torch.Tensor:
        """Each frame gets the mean output of the clips it falls in (NaN where none covers it)."""
        n = len(self.corpus.frame_index)
        sums = torch.zeros(n, pred.pred.shape[1], dtype=torch.float64, device=pred.pred.device)
        counts = torch.zeros(n, dtype=torch.float64, device=pred.pred.device)
        for i, j in enumerate(pred.samples):
            lo = int(self.corpus.offsets[self.table.video[j]] + self.table.start[j])
            hi = lo + int(self.table.length[j])
            sums[lo:hi] += pred.pred[i].double()
            counts[lo:hi] += 1
        out = sums / counts.clamp(min=1)[:, None]
        out[counts == 0] = float("nan")
        return out.float()

    def _csv_head(self, pred: ClipPred, i: int) -> list:
        j = pred.samples[i]
        return [self.corpus.video_ids[self.table.video[j]], int(self.table.start[j]), int(self.table.length[j])]


def _check_recut(cfg, corpus, form: str) -> None:
    recut = cfg.data.recut or {}
    unknown = sorted(set(recut) - set(corpus.modalities))
    if unknown:
        raise InputError("<config>", "bad_config", f"data.recut names modalities {unknown}",
                         fix=f"modalities are {list(corpus.modalities)}")
    bad = {k: v for k, v in recut.items()
           if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(n, int) and n > 0 for n in v))}
    if bad:
        raise InputError("<config>", "bad_config", f"data.recut {bad}", fix="{modality: [tokens, width]}, e.g. {audio: [32, 1024]}")
    if recut and form != "split":
        raise InputError("<config>", "bad_config", f"data.recut needs a head fed per modality (batch split), "
                         f"head {cfg.head.name!r} takes {form!r}", fix="drop data.recut or use e.g. head eri")


@TASKS.register("clip_regression")
class ClipRegressionTask(ClipTask):
    kind = "clip_regression"
    monitor = "apcc"

    def _targets(self, table):
        lab = self.cfg.labels
        y = np.full((len(table), len(lab.targets)), np.nan)
        if lab.source == "clip":
            for i in range(len(table)):
                row = self.corpus.rows[table.video[i]]["labels"]
                for j, name in enumerate(lab.targets):
                    v = row.get(name)
                    y[i, j] = float(v) if v is not None else np.nan
            return scaled(y, lab.scale).astype(np.float32)
        cols = self.corpus.label_names
        for i in range(len(table)):
            frames = self._clip_frames_labels(table, i)
            for j, t in enumerate(lab.targets):
                stat, args = parse_target(t)
                y[i, j] = clip_stat(scaled(frames[:, cols.index(args[0])], lab.scale), stat or "mean")
        return y.astype(np.float32)

    def _no_targets(self, n):
        return np.full((n, self.n_outputs), np.nan, np.float32)

    def _keep(self, y):
        return np.isfinite(y).all(1)

    def _scores(self, pred, true):
        return evaluate.clip_regression_metrics(pred, true, self.cfg.labels.targets)

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
        from .. import report

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


@TASKS.register("clip_classification")
class ClipClassificationTask(ClipTask):
    kind = "clip_classification"
    monitor = "accuracy"

    def __init__(self, cfg, corpus, roles, device, labelled=True):
        if len(cfg.labels.targets) != 1:
            raise InputError("<config>", "bad_config", "clip_classification takes exactly one target",
                             fix="labels.targets: [emotion] or [quadrant(valence,arousal)]")
        self.classes = class_names(cfg)
        if not self.classes:
            raise InputError("<config>", "bad_config", "clip_classification needs labels.classes",
                             fix="list the class names in logit order")
        super().__init__(cfg, corpus, roles, device, labelled)
        self.n_outputs = len(self.classes)

    def _targets(self, table):
        lab = self.cfg.labels
        stat, args = parse_target(lab.targets[0])
        names = []
        for i in range(len(table)):
            if stat == "quadrant":
                frames = self._clip_frames_labels(table, i)
                cols = self.corpus.label_names
                v = clip_stat(frames[:, cols.index(args[0])], "mean")
                a = clip_stat(frames[:, cols.index(args[1])], "mean")
                names.append(None if math.isnan(v) or math.isnan(a) else quadrant_of(v, a))
            elif stat is None:
                names.append(self.corpus.rows[table.video[i]]["labels"].get(args[0]))
            else:
                raise InputError("<config>", "bad_config", f"classification target {lab.targets[0]!r}",
                                 fix="a clip label name or quadrant(valence,arousal)")
        unknown = sorted({str(n) for n in names if n is not None and n not in self.classes})
        if unknown:
            raise InputError("<config>", "bad_labels", f"clip labels {unknown} are not in labels.classes "
                             f"{self.classes}", fix="add them to labels.classes (or fix the labels)")
        return np.array([self.classes.index(n) if n is not None else -1 for n in names], np.int64)

    def _no_targets(self, n):
        return np.full(n, -1, np.int64)

    def _keep(self, y):
        return y >= 0

    def loss(self, out, b):
        # a tuple: each item its own loss, summed (AV-CPNet: out, out_audio, out_visual; the
        # sequence head's stats experts: encoder, statistics)
        outs = out if isinstance(out, tuple) else (out,)
        if "mix" in b:               # data.mixup: the blend's loss against both labels
            from heads.augment import mixup_loss

            perm, lam = b["mix"]
            return sum(mixup_loss(lambda o, y: self._loss(o, {**b, "y": y}, self), o, b["y"], perm, lam)
                       for o in outs)
        return sum(self._loss(o, b, self) for o in outs)

    def _scores(self, logits_or_labels, true):
        return evaluate.classification_metrics(logits_or_labels, true, self.classes)

    def metrics(self, pred):
        from heads import metrics

        out = self._scores(pred.pred, pred.true)
        for name, logits in pred.extra.items():
            out[f"accuracy_{name.split('_')[1]}_only"] = metrics.accuracy(logits, pred.true)
        return out

    def refit_stats(self, model) -> None:
        """The sequence head's statistics expert refitted on the whole training clips (no crop,
        no noise): head.args.stats_refit (heads.classifier.SequenceClassifier.refit_stats)."""
        if self.form != "concat":
            raise InputError("<config>", "bad_config", "head.args.stats_refit needs the sequence head",
                             fix="remove stats_refit from head.args")
        feats = [model.utterance_stats(b["x"][0], b["masks"][0])
                 for b in (self.batch("train", sel, train=False) for sel in self._eval_batches("train"))]
        y = self.y_all[torch.as_tensor(self.role_rows["train"], device=self.device)]
        model.refit_stats(torch.cat(feats), y, C=model.stats_refit)

    def majority(self) -> int:
        y = self.y_all[torch.as_tensor(self.role_rows["train"], device=self.device)]
        return int(torch.bincount(y, minlength=len(self.classes)).argmax())

    def baseline(self, role):
        true = self.y_all[torch.as_tensor(self.role_rows[role], device=self.device)]
        out = self._scores(torch.full_like(true, self.majority()), true)
        out["predicts"] = f"majority class {self.classes[self.majority()]}"
        return out

    def plot(self, pred, out_dir, role):
        from .. import report

        cm = evaluate.classification_metrics(pred.pred, pred.true, self.classes)["confusion"]
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
