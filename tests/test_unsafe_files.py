"""Files that would run code when loaded are refused with the usual one-line error, exit 2."""
import pytest
import torch

from clirun import emocache
from featurize.weights import load_plain
from store.errors import InputError



class NotAStateDict(torch.nn.Linear):
    pass


def test_yaml_with_a_python_tag_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    study = tmp_path / "evil.yaml"
    study.write_text(f"name: evil\nx: !!python/object/apply:os.system ['touch {marker}']\n")
    (tmp_path / "features").mkdir()  # a store, so the check of --store passes
    p = emocache("train", "--exp", study, "--store", tmp_path, "--runs", tmp_path / "runs", ok=False, timeout=300)
    assert p.returncode == 2, p.stderr
    assert "[unsafe_file]" in p.stderr and "evil.yaml" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not marker.exists()


def test_a_pickled_module_is_not_a_state_dict(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(NotAStateDict(2, 2), path)
    with pytest.raises(InputError) as e:
        load_plain(path)
    assert e.value.reason == "unsafe_file" and "state_dict()" in e.value.fix
    good = tmp_path / "sd.pt"
    torch.save(NotAStateDict(2, 2).state_dict(), good)
    assert set(load_plain(good)) == {"weight", "bias"}


def test_resuming_from_a_pickled_checkpoint_is_refused(tmp_path):
    from experiments.checkpoints import load_checkpoint

    torch.save({"model": NotAStateDict(2, 2)}, tmp_path / "last.pt")
    with pytest.raises(InputError, match="unsafe_file"):
        load_checkpoint(tmp_path / "last.pt", None, None, None, None, None, "cpu")
