"""``frames``: per-frame regression on windows (ABAW2): a window table + one-op gather."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from store.errors import InputError

from .. import evaluate, windows
from ..targets import scaled
from .base import TASKS, Task


@dataclass
class FramePred:
    role: str
    videos: list[int]
    frames: torch.Tensor      # [F] global frame indices of the split
    pred: torch.Tensor        # [F, K]
    true: torch.Tensor        # [F, K]
    valid: torch.Tensor       # [F] counts in metrics


@TASKS.register("frames")
class FrameTask(Task):
    """Per-frame regression on windows (ABAW2): window table + one-op gather."""
    kind = "frames"
    monitor = "ccc_mean"

    def __init__(self, cfg, corpus, roles, device, labelled=True):
        super().__init__(cfg, corpus, roles, device, labelled)
        if cfg.data.recut:
            raise InputError("<config>", "bad_config", "data.recut re-cuts whole clips; task frames keeps the time axis",
                             fix="drop data.recut (it is for clip tasks, e.g. eri)")
        if labelled:
            if corpus.labels is None:
                raise InputError("<config>", "bad_config",
                                 "task frames needs per-frame labels (labels.source: frames)",
                                 fix="set labels.source: frames, or use a clip task for clip labels")
            self.y = scaled(corpus.labels, cfg.labels.scale)
        else:
            self.y = torch.full((len(corpus.frame_index), self.n_outputs), float("nan"), device=device)
        self.frame_ok = corpus.frame_valid(cfg.data.mask_no_face)
        self._y_filled = torch.nan_to_num(self.y)       # what a batch carries (its mask says which count)
        table = windows.window_table(corpus.lengths, cfg.data.window, cfg.data.hop)
        self.idx, self.valid = {}, {}
        for role, vids in roles.items():
            sub = table.for_videos(vids)
            self.idx[role], self.valid[role] = windows.index_tensor(sub, corpus.offsets, cfg.data.window, device)

    def n_samples(self, role):
        return len(self.idx[role])

    def batch(self, role, sel):
        idx, valid = self.idx[role][sel], self.valid[role][sel]
        xs = [windows.gather(m.x, idx, valid) for m in self.corpus.modalities.values()]
        flat = idx.reshape(-1)
        y = self._y_filled.index_select(0, flat).view(idx.shape + self._y_filled.shape[1:])
        mask = valid & self.frame_ok.index_select(0, flat).view(idx.shape)
        return {"x": xs, "y": y, "mask": mask, "idx": idx, "valid": valid}

    @torch.no_grad()
    def predict(self, model, role):
        avg = evaluate.WindowAverager(len(self.corpus.frame_index), self.n_outputs, self.device)
        for sel in self._eval_batches(role):
            b = self.batch(role, sel)
            avg.add(b["idx"], b["valid"], self.forward(model, b).float())   # overlaps averaged per frame
        frames = self.corpus.frames_of(self.roles[role])
        pred, covered = avg.result(frames)
        return FramePred(role, list(self.roles[role]), frames, pred, self.y[frames],
                         self.frame_ok[frames] & covered)

    def frame_predictions(self, pred: FramePred) -> torch.Tensor:
        out = torch.full((len(self.corpus.frame_index), pred.pred.shape[1]), float("nan"), device=pred.pred.device)
        out[pred.frames] = pred.pred
        return out

    def _scores(self, pred, true, valid):
        return evaluate.frame_metrics(pred, true, valid, self.cfg.labels.targets)

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
        from .. import report

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
            report.traces(out, self.cfg.labels.targets, Path(out_dir) / f"traces_{role}.png",
                          total=len(vids), role=role)

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
