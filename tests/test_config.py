"""Study YAMLs -> dataclasses; typed --set overrides; extends; clear errors."""
import pytest

from experiments import config as C
from store.errors import InputError


@pytest.mark.parametrize("study", ["abaw2", "demo", "eri", "eri-demo", "avcpnet", "avcpnet-demo", "emodb"])
def test_every_shipped_study_loads(study):
    cfg = C.load(study)
    assert cfg.name == study and cfg.features and cfg.labels.targets
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.train.epochs, int)
    assert cfg.head.name in ("lfan", "eri", "avcpnet", "sequence")


def test_published_abaw2_settings_and_demo_inherits_them():
    a, d = C.load("abaw2"), C.load("demo")
    assert a.optim.lr == 1e-5 and a.optim.weight_decay == 1e-3 and a.train.batch_size == 8
    assert a.head.args["visual_channels"] == [128] * 4 and a.data.window == 300 and a.data.hop == 200
    assert a.folds.scheme == "abaw2" and a.schedule.name == "plateau" and a.train.early_stop == 20
    # demo = abaw2 with demo inputs and sizes: inherited what it does not set
    assert d.task == "frames" and d.loss.name == "ccc" and d.head.args["compat"] == "ours"
    assert d.dataset == "demo" and [f.extractor for f in d.features["visual"]] == ["mesh", "fer"]


def test_overrides_are_typed_by_the_value_they_replace():
    cfg = C.load("abaw2", ["optim.lr=1e-4", "folds.test=3", "train.amp=false", "seed=7",
                           "head.args.dropout=0.3", "labels.targets=[valence]", "folds.val=2"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.folds.test == 3 and cfg.train.amp is False and cfg.seed == 7
    assert cfg.head.args["dropout"] == 0.3 and cfg.labels.targets == ["valence"]
    assert cfg.folds.val == 2   # was null: parsed as YAML


def test_overrides_reach_a_feature_by_its_index():
    """What a user of the real studies types to name their backbone weights."""
    cfg = C.load("eri", ["features.visual.0.params.weights=/m/r18.pt", "features.visual.1.params.static=false",
                         "features.audio.0.params.n_mfcc=20"])
    assert cfg.features["visual"][0].params == {"weights": "/m/r18.pt"}
    assert cfg.features["visual"][1].params == {"static": False}
    assert cfg.features["audio"][0].params == {"n_mfcc": 20, "deltas": False}
    with pytest.raises(InputError, match="not an index") as e:
        C.load("eri", ["features.visual.2.params.weights=x"])
    assert "0..1" in e.value.fix


def test_override_errors_name_the_problem():
    with pytest.raises(InputError, match="unknown key"):
        C.load("abaw2", ["optim.learning_rate=1"])
    with pytest.raises(InputError, match="expected int") as e:
        C.load("abaw2", ["train.epochs=many"])
    assert "train.epochs=" in e.value.fix      # the fix shows a value of the right type
    # one coercion helper (featurize.registry.coerce): a word that is no boolean is refused,
    # on --set and in the YAML alike (it used to read as false)
    with pytest.raises(InputError, match="expected bool"):
        C.load("abaw2", ["train.amp=maybe"])
    with pytest.raises(InputError, match="train.amp: 'maybe' is not a bool"):
        C.from_dict({**C.load_raw("abaw2"), "train": {"amp": "maybe"}})
    with pytest.raises(InputError, match="a.b=c"):
        C.load("abaw2", ["optim.lr"])
    with pytest.raises(InputError, match="no study named"):
        C.load("no-such-study")


def test_yaml_path_with_extends_and_round_trip(tmp_path):
    child = tmp_path / "mine.yaml"
    child.write_text("extends: demo\nname: mine\ntrain: {epochs: 2}\noptim: {lr: 1e-3}\n")
    cfg = C.load(child)
    assert cfg.name == "mine" and cfg.train.epochs == 2 and cfg.train.batch_size == 4
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)   # YAML 1.1 reads 1e-3 as a string
    C.dump(cfg, tmp_path / "resolved.yaml")
    again = C.load(tmp_path / "resolved.yaml")
    assert again == cfg
    assert list(again.features) == list(cfg.features)                  # modality order is meaning


def test_folds_test_all_overrides_a_numbered_fold():
    # abaw2 holds out fold 5; `--set folds.test=all` must give the 6-fold protocol, not "expected int"
    cfg = C.load("abaw2", ["folds.test=all"])
    assert cfg.folds.test == "all"
    assert C.load("abaw2", ["folds.test=3"]).folds.test == 3
    assert C.load("abaw2", ["optim.lr=1e-4"]).optim.lr == 1e-4
