"""The package's import graph, read from the source (AST): layers only import downwards, no cycle.

A *unit* is a top-level module or subpackage of ``metakd`` (``metakd.train``, ``metakd.errors``).
Each unit sits in one layer of :data:`LAYERS`; a module may import its own unit and the units
of lower layers, never a unit of its own or a higher layer. Inside a unit, modules may import
each other, but no module reaches itself through imports (no cycle anywhere in the graph).
"""

from __future__ import annotations

import ast
from pathlib import Path

import metakd

#: Lowest first. Layer of a unit = the index of the row that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("metakd", "errors", "threads"),  # the package face (version), errors, thread counts
    ("extras", "progress", "yamlio"),  # optional dependencies; progress bars; safe YAML
    ("configio", "tracking", "distributed", "prefetch", "threshold", "checkpoint"),
    ("data", "resume"),  # reading and shaping tasks; the resume checkpoint
    ("inputs",),  # what a command reads (its --out may not hold any of it)
    ("models", "rundir"),  # the networks; run folders
    ("meta", "episodes", "distill"),  # meta-learning math; episodes; distillation
    ("config", "persist"),  # the training config; teacher bundles and detector files
    ("contract",),  # what an export carries, read back without running it
    ("exports",),  # TorchScript and ONNX exports
    ("train", "detect"),  # meta-training; few-shot adaptation
    ("launch", "evaluate"),  # torchrun launching; the evaluation protocol and its baselines
    ("jobs",),  # the commands' file I/O and run folders
    ("cli", "adapt", "detector", "baselines"),  # the CLI; old import paths kept working
    ("__main__",),
)

PACKAGE = Path(metakd.__file__).parent


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("metakd", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a import b`` names ``a.b`` if that
    is a module, else ``a``); relative imports are resolved against the importing module."""

    def known(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names if a.name.startswith("metakd")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                if not base.startswith("metakd"):
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else known(base))
        graph[name] = targets - {name}
    return graph


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else "metakd"


def test_every_unit_has_a_layer() -> None:
    layered = {unit for layer in LAYERS for unit in layer}
    units = {_unit(m) for m in _modules()}
    assert units <= layered, f"units without a layer: {sorted(units - layered)}"
    assert len(layered) == sum(len(layer) for layer in LAYERS), "a unit is in two layers"


def test_imports_only_run_down_the_layers() -> None:
    layer_of = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    upward = [
        f"{source} -> {target}"
        for source, targets in _import_graph(_modules()).items()
        for target in targets
        if _unit(source) != _unit(target) and layer_of[_unit(target)] >= layer_of[_unit(source)]
    ]
    assert not upward, "imports that do not run down a layer:\n" + "\n".join(sorted(upward))


def test_the_import_graph_has_no_cycle() -> None:
    graph = _import_graph(_modules())
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_reader_sees_imports() -> None:
    """The checks above are only as good as the graph: it must see the imports it guards."""
    graph = _import_graph(_modules())
    assert "metakd.train.loop" in graph["metakd.train"]
    assert "metakd.errors" in graph["metakd.configio"]
    assert "metakd.meta.learners.registry" in graph["metakd.meta.learners.maml"]


#: Longest a module may grow (issue #26): past it, a module holds more than one role.
MAX_MODULE_LINES = 450


def test_no_module_is_longer_than_the_limit() -> None:
    lengths = {
        name: len(path.read_text(encoding="utf-8").splitlines())
        for name, path in _modules().items()
    }
    assert {n: k for n, k in lengths.items() if k > MAX_MODULE_LINES} == {}


def test_scoring_imports_neither_scikit_learn_nor_scipy_stats() -> None:
    """``metakd score`` of a saved detector reads files and runs a network: the estimator
    (scikit-learn) and distillation (scipy.stats) load on first use, about a second apart."""
    import subprocess
    import sys

    probe = (
        "import sys, metakd.jobs.score, metakd.detect; "
        "print(sorted(m for m in ('sklearn', 'scipy.stats') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    # The lazy names still resolve, as the package's __all__ promises.
    from metakd.detect import FewShotDetector, fit_many
    from metakd.detect.estimator import FewShotDetector as direct

    assert FewShotDetector is direct and callable(fit_many)
