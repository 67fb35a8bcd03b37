"""`mesh`: mediapipe face mesh (468 landmarks) on the `faces` crops.

mediapipe 0.10.14 `solutions.face_mesh` (model in the wheel), one face per crop. With
`static=True` (default) each crop is processed alone (detector + landmarks), so a result
never depends on the frames before it; `static=False` uses mediapipe's tracking between
consecutive crops (faster; the tracker is rebuilt at each video start and after a masked
crop, so state never leaks across videos or gaps).

Output: data float16 [T, 468*3] as (x0, y0, z0, x1, ...): x, y normalised to the crop
(0..1 across its width/height), z in mediapipe's units (roughly the scale of x, relative to
the head centre); mask False where the crop is masked or no mesh was found; zeros there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurize.registry import Extractor, register

N_LANDMARKS = 468


@dataclass(frozen=True)
class MeshConfig:
    static: bool = True               # independent crops (True) or mediapipe tracking (False)
    min_confidence: float = 0.5       # detection (and tracking) confidence

    def __post_init__(self):
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError("min_confidence must be in [0, 1]")


@register
class Mesh(Extractor):
    name = "mesh"
    version = "1"
    Config = MeshConfig
    input = "crops"
    libraries = ("mediapipe",)

    def __init__(self, config: MeshConfig | None = None):
        super().__init__(config)
        self._fm = None
        self._fm = self._new()
        self._found = 0
        self._n = 0

    def _new(self):
        from .quiet import import_mediapipe, native_stderr_off

        if self._fm is not None:
            self._fm.close()
        c = self.config
        with native_stderr_off():   # TFLite/absl banners on fd 2; a blank crop makes the graph print them now
            mp = import_mediapipe()

            fm = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=c.static, max_num_faces=1, refine_landmarks=False,
                min_detection_confidence=c.min_confidence, min_tracking_confidence=c.min_confidence)
            fm.process(np.zeros((64, 64, 3), np.uint8))
        return fm

    def close(self) -> None:
        if self._fm is not None:
            self._fm.close()
            self._fm = None

    def start(self, info) -> None:
        if not self.config.static:
            self._fm = self._new()
        self._found = 0
        self._n = 0

    def landmarks(self, crop: np.ndarray) -> np.ndarray | None:
        """[468, 3] float32 for one RGB crop, or None when no face mesh was found."""
        res = self._fm.process(np.ascontiguousarray(crop))
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        return np.array([(p.x, p.y, p.z) for p in lm[:N_LANDMARKS]], np.float32)

    def process(self, frames: np.ndarray, ctx: dict) -> dict[str, np.ndarray]:
        n = len(frames)
        in_mask = np.asarray(ctx.get("mask", np.ones(n, bool)), bool)
        data = np.zeros((n, N_LANDMARKS * 3), np.float16)
        mask = np.zeros(n, bool)
        for i in range(n):
            if not in_mask[i]:
                if not self.config.static:
                    self._gap = True
                continue
            if not self.config.static and getattr(self, "_gap", False):
                self._fm = self._new()
                self._gap = False
            pts = self.landmarks(frames[i])
            if pts is not None:
                data[i] = pts.reshape(-1).astype(np.float16)
                mask[i] = True
        self._n += n
        self._found += int(mask.sum())
        return {"data": data, "mask": mask}

    def finish(self) -> dict:
        return {"frames": self._n, "mesh_frames": self._found, "landmarks": N_LANDMARKS}
