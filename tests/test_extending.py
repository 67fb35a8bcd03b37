"""A head and a loss added from OUTSIDE the package, through the public registries only,
train a study on a real Zarr store (docs/extending.md walks through the same steps)."""
import importlib
import json
import sys
import textwrap

import pytest
import torch

from test_train import make_store, study_yaml

PLUGIN = textwrap.dedent('''
    """A user's own head and loss: nothing in emocache is edited."""
    import torch
    from torch import nn

    from experiments.losses import LOSSES
    from experiments.models import HEADS

    CALLS = {"loss": 0}


    class FrameMLP(nn.Module):
        """Per-frame MLP on the modalities side by side (torch only, like every head)."""

        def __init__(self, in_dim, n_outputs, hidden=16):
            super().__init__()
            self.inp = nn.Linear(in_dim, hidden)
            self.out = nn.Linear(hidden, n_outputs)

        def forward(self, xs):
            return torch.tanh(self.out(torch.relu(self.inp(torch.cat(list(xs), -1)))))


    @HEADS.register("toy_mlp", batch="split", call=lambda model, b: model(b["x"]))
    def build_toy_mlp(inputs, hidden=16):
        return FrameMLP(sum(inputs.dims), inputs.n_outputs, hidden)


    @LOSSES.register("toy_huber", tasks=("frames",))
    def toy_huber(out, b, task, delta=0.5):
        CALLS["loss"] += 1
        err = nn.functional.huber_loss(out.float(), b["y"], reduction="none", delta=delta).mean(-1)
        m = b["mask"].float()
        return (err * m).sum() / m.sum().clamp_min(1.0)
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "my_emotion_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    mod = importlib.import_module("my_emotion_plugin")
    yield mod
    sys.modules.pop("my_emotion_plugin", None)


def test_a_head_and_a_loss_from_outside_train_a_study(tmp_path, plugin):
    from experiments.train import run_study
    from store.errors import InputError

    keys = make_store(tmp_path / "store")
    y = study_yaml(tmp_path / "toy.yaml", keys, name="toy",
                   head={"name": "toy_mlp", "args": {"hidden": 12}},
                   loss={"name": "toy_huber", "args": {"delta": 0.3}},
                   optim={"lr": 1e-2}, train={"epochs": 5, "batch_size": 4})
    run = run_study(y, tmp_path / "store", tmp_path / "runs", progress=False)
    m = json.loads((run / "metrics.json").read_text())["test"]
    assert m["model"]["ccc_mean"] > m["baseline"]["ccc_mean"] + 0.2      # it learned
    assert plugin.CALLS["loss"] > 0                                       # with the user's loss
    sd = torch.load(run / "best.pt", weights_only=True)
    assert set(sd) == {"inp.weight", "inp.bias", "out.weight", "out.bias"} and sd["inp.weight"].shape == (12, 9)

    # the registration also guards its task kinds and its arguments
    bad = study_yaml(tmp_path / "bad.yaml", keys, name="bad", task="clip_regression",
                     labels={"source": "frames", "targets": ["mean(valence)"]},
                     data={"clip": 80, "clip_hop": 80}, head={"name": "toy_mlp", "args": {}},
                     loss={"name": "toy_huber"})
    with pytest.raises(InputError) as e:
        run_study(bad, tmp_path / "store", tmp_path / "runs", progress=False)
    assert e.value.reason == "bad_config" and "toy_huber" in str(e.value) and "mse" in e.value.fix
    typo = study_yaml(tmp_path / "typo.yaml", keys, name="typo", head={"name": "toy_mlp", "args": {"hiden": 3}},
                      loss={"name": "toy_huber"})
    with pytest.raises(InputError) as e:
        run_study(typo, tmp_path / "store", tmp_path / "runs", progress=False)
    assert e.value.reason == "bad_config" and "hiden" in str(e.value)
