"""docs/config-reference.md is generated from the config dataclasses: it must match them."""
from pathlib import Path

from experiments import config, config_doc

ROOT = Path(__file__).resolve().parents[1]


def test_committed_config_reference_matches_the_dataclasses():
    committed = (ROOT / "docs" / "config-reference.md").read_text()
    assert committed == config_doc.render(), \
        "docs/config-reference.md is stale: python -m experiments.config_doc > docs/config-reference.md"


def test_reference_names_every_field_of_every_section():
    text = config_doc.render()
    for cls in (config.StudyConfig, config.DataConfig, config.TrainConfig, config.FoldsConfig, config.FeatureSpec):
        for f in cls.__dataclass_fields__:
            assert f"| `{f}` |" in text, f


def test_readme_links_the_guide_and_names_no_path_outside_the_repo():
    readme = (ROOT / "README.md").read_text()
    assert "docs/guide.md" in readme
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "../" not in doc.read_text(), f"{doc.name} points outside the repository"
    for link in ("config-reference.md",):
        assert link in (ROOT / "docs" / "guide.md").read_text()
