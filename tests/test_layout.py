"""The shape of experiments/: no import cycle (function-level imports included), named imports,
one registry style. Static checks on the source; they fail on the first cycle or alias added."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "experiments"


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """experiments.* modules that `path` imports anywhere (module level or inside functions)."""
    mod = _module(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("experiments")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("experiments"):
                continue
            # `from . import x` names submodules; `from .x import y` names module x
            subs = {f"{target}.{a.name}" for a in node.names}
            known = {_module(p) for p in PKG.rglob("*.py")}
            hit = {s for s in subs if s in known}
            out |= hit or {target}
    out.discard(mod)
    return out


PENDING: set = set()   # (module, module) edges allowed while a move is in progress: none now


def test_experiments_has_no_import_cycle():
    graph = {_module(p): _imports(p) for p in PKG.rglob("*.py")}
    for a, b in PENDING:
        graph.get(a, set()).discard(b)
    # a package's __init__ is imported by its submodules implicitly: not an edge that forms a cycle
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if n.startswith(m + "."):
                continue                     # a package importing its own submodules
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack + [m, n]))
            if state.get(n) is None:
                visit(n, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    # the cycle this layout removed
    assert "experiments.train" not in graph["experiments.crossval"]
    assert "experiments.crossval" not in graph["experiments.fit"]


def test_no_single_letter_module_aliases_in_experiments():
    bad = []
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bad += [f"{p.relative_to(ROOT)}: {a.name} as {a.asname}" for a in node.names
                        if a.asname and len(a.asname) == 1]
    assert not bad, bad


def test_heads_import_torch_only():
    for p in (ROOT / "heads").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for n in names:     # torch and the standard library, nothing else (no store, no featurize)
                top = n.split(".")[0]
                assert top == "torch" or top in sys.stdlib_module_names, (p, n)


def test_every_registry_is_the_one_registry_type():
    from experiments.folds import FOLD_SCHEMES
    from experiments.losses import LOSSES
    from experiments.models import HEADS
    from experiments.optim import OPTIMIZERS, SCHEDULERS
    from experiments.tasks import TASKS
    from featurize.backbone import ARCHS
    from featurize.datasets import ADAPTERS
    from featurize.registry import EXTRACTORS, Registry
    from store.errors import InputError

    for reg in (LOSSES, HEADS, OPTIMIZERS, SCHEDULERS, TASKS, FOLD_SCHEMES, ARCHS, ADAPTERS, EXTRACTORS):
        assert isinstance(reg, Registry) and reg.names(), reg.kind
    assert {"lfan", "eri", "avcpnet", "sequence"} <= set(HEADS.names())
    assert {"ccc", "mse", "l1", "apcc", "ce", "ep_ce", "pcce"} <= set(LOSSES.names())
    try:
        HEADS.get("nope")
    except InputError as e:
        assert e.reason == "bad_config" and "lfan" in e.fix
    else:
        raise AssertionError("unknown head accepted")
