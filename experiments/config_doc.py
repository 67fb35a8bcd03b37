"""Generate docs/config-reference.md from the study dataclasses (experiments.config), so the
reference cannot drift from the code: `python -m experiments.config_doc > docs/config-reference.md`
(tests/test_config_doc.py fails when the committed file differs)."""
from __future__ import annotations

import dataclasses
import inspect
import re
import sys

from . import config

_COMMENT = re.compile(r"^\s*(\w+)\s*:[^#]*#\s*(.*)$")


def _comments(cls) -> dict[str, str]:
    """field -> its trailing `# ...` comment in the class source."""
    out: dict[str, str] = {}
    for line in inspect.getsource(cls).splitlines():
        m = _COMMENT.match(line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
        return "(see below)" if dataclasses.is_dataclass(v) else repr(v)
    return "required"


def _type(f: dataclasses.Field) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return str(t).replace("typing.", "")


def render() -> str:
    lines = ["# Study config reference", "",
             "Generated from the dataclasses in `experiments/config.py` by",
             "`python -m experiments.config_doc > docs/config-reference.md`; do not edit by hand",
             "(a test compares this file with the code). A study YAML sets any of these keys;",
             "`--set section.key=value` overrides one on the command line. Unknown keys stop the",
             "run at load time with the list of valid ones.", ""]
    sections = [("(top level)", config.StudyConfig)]
    for f in dataclasses.fields(config.StudyConfig):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory()):
            sections.append((f.name, type(f.default_factory())))
    sections.append(("features.<modality>[i]", config.FeatureSpec))
    for title, cls in sections:
        raw = cls.__doc__ or ""
        doc = "" if not raw or raw.startswith(cls.__name__ + "(") else raw.strip().splitlines()[0]
        lines += [f"## `{title}`" + (f" — {doc}" if doc else ""), "", "| key | type | default | meaning |",
                  "|---|---|---|---|"]
        notes = _comments(cls)
        for f in dataclasses.fields(cls):
            meaning = notes.get(f.name, "").replace("|", "\\|")
            typ = _type(f).replace("|", "\\|")
            lines.append(f"| `{f.name}` | `{typ}` | `{_default(f)}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render())
