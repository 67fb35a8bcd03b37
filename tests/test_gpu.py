"""GPU correctness (`make test-gpu`; skipped without CUDA): each study's head trains a few
steps on CUDA under autocast with its windows gathered on the device, and its losses match
the same steps in fp32 on the CPU; the `backbone` extractor on CUDA matches its CPU output.

Tolerances: autocast runs the matmuls/convs in half precision (10-bit mantissa for fp16,
7 for bf16), so a loss agrees to ~1e-3-1e-2 relative; 5e-2 relative (+1e-3 absolute) leaves
room for three optimizer steps without hiding a wrong kernel (a wrong one is off by O(1)).
"""
import copy
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (make test-gpu on a GPU machine)")]

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

STUDIES = ["abaw2", "eri", "avcpnet", "emodb"]


def _losses(study, device, model, dtype, steps=3):
    from bench_train import STUDIES as FRAMES, synthetic_corpus

    from experiments import config, tasks

    cfg = config.load(study)
    corpus = synthetic_corpus(cfg, 6, FRAMES[study], torch.device("cpu"))
    for m in corpus.modalities.values():
        m.x, m.mask = m.x.to(device), m.mask.to(device)
    if corpus.labels is not None:
        corpus.labels = corpus.labels.to(device)
    task = tasks.make(cfg, corpus, {"train": list(range(6)), "val": [0], "test": [1]}, device)
    model = model.to(device).eval()          # eval: no dropout, so both devices run one function
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sel = torch.arange(min(4, task.n_samples("train")), device=device)
    out = []
    for _ in range(steps):
        b = task.batch("train", sel)
        with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            o = task.forward(model, b)
        loss = task.loss(o, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(float(loss.detach()))
    return out


def _model(study):
    from bench_train import STUDIES as FRAMES, synthetic_corpus

    from experiments import config, tasks

    cfg = config.load(study)
    corpus = synthetic_corpus(cfg, 6, FRAMES[study], torch.device("cpu"))
    task = tasks.make(cfg, corpus, {"train": list(range(6)), "val": [0], "test": [1]}, torch.device("cpu"))
    torch.manual_seed(0)
    return task.build_model()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("study", STUDIES)
def test_head_steps_on_cuda_match_cpu_fp32(study, dtype):
    model = _model(study)
    cpu = _losses(study, torch.device("cpu"), copy.deepcopy(model), None)
    gpu = _losses(study, torch.device("cuda"), copy.deepcopy(model), getattr(torch, dtype))
    assert np.allclose(gpu, cpu, rtol=5e-2, atol=1e-3), (study, dtype, cpu, gpu)


def test_backbone_on_cuda_matches_cpu(tmp_path):
    from featurize.backbone import ARCHS, Backbone, BackboneConfig

    torch.manual_seed(0)
    w = tmp_path / "tiny.pt"
    torch.save(ARCHS.get("tiny_cnn")().state_dict(), w)
    crops = np.random.default_rng(0).integers(0, 255, (40, 112, 112, 3), dtype=np.uint8)
    mask = np.ones(40, bool)
    mask[3] = False
    outs = {}
    for dev in ("cpu", "cuda"):
        ex = Backbone(BackboneConfig(weights=str(w), arch="tiny_cnn", device=dev, batch=16))
        outs[dev] = ex.process(crops, {"mask": mask})["data"].astype(np.float32)
    assert np.allclose(outs["cuda"], outs["cpu"], atol=2e-2, rtol=1e-2)
    assert not outs["cuda"][3].any()
