"""The package's house plan, checked: imports point down the layers, never sideways between
stages or up, there are no cycles, and only the backend package knows which device it has."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vaecf"

# Higher imports lower (or its own layer's package); see docs/design.md, "Layout".
LAYER = {"cli": 7, "bench": 6, "serving": 5, "training": 5, "evaluation": 4, "model": 3,
         "data": 2, "examples": 1, "backend": 1, "settings": 1, "errors": 0, "atomic": 1,
         "formats": 1, "progress": 1, "__init__": 0, "__main__": 8}


def _unit(module: str) -> str:
    """``vaecf.training.loop`` -> ``training``; ``vaecf.errors`` -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    """module -> vaecf modules it imports anywhere in its body (lazy imports included)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("vaecf", *path.relative_to(PACKAGE).with_suffix("").parts))
        name = name.removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "vaecf":
                    found |= {f"vaecf.{alias.name}" for alias in node.names}
                elif node.module.startswith("vaecf."):
                    found.add(node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("vaecf.")}
        graph[name] = found
    return graph


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _imports()}
    assert units <= set(LAYER), units - set(LAYER)


def test_imports_point_down_and_never_sideways_between_stages():
    wrong = []
    for module, targets in _imports().items():
        here = _unit(module)
        for target in targets:
            there = _unit(target)
            if there == "__version__" or there == here:
                continue
            if LAYER[there] >= LAYER[here]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_no_import_cycles_between_units():
    edges: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        edges.setdefault(_unit(module), set()).update(
            _unit(t) for t in targets if _unit(t) != _unit(module))
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            assert state.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in list(edges):
        if node not in state:
            visit(node, [])


def test_only_the_backend_package_asks_which_device_it_has():
    pattern = re.compile(r"""\.name\s*[!=]=\s*["'](gpu|cpu)["']|["'](gpu|cpu)["']\s*[!=]=""")
    offenders = [f"{path.relative_to(PACKAGE)}:{number}"
                 for path in PACKAGE.rglob("*.py") if "backend" not in path.parts
                 for number, line in enumerate(path.read_text().splitlines(), start=1)
                 if pattern.search(line)]
    assert not offenders, offenders


def test_help_does_not_import_heavy_libraries():
    """`vaecf --help` stays fast by construction: no TensorFlow, Keras, pandas or GPU library
    is imported to build the command list."""
    import subprocess
    import sys

    code = ("import sys; from vaecf.cli.app import app; "
            "from typer.main import get_command; get_command(app); "
            "print(sorted(m for m in ('tensorflow','keras','cupy','cudf','pandas','horovod',"
            "'dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("command", [[], ["bench"], ["prepare"], ["train"], ["test"],
                                     ["recommend"], ["export"], ["serve"],
                                     ["bench", "prepare"], ["bench", "train"],
                                     ["bench", "inference"], ["bench", "serve"]])
def test_help_pages_show_flags_without_a_type(cli, command):
    """Flags (--help included) show no `<bool>` placeholder: they take no value."""
    result = cli(*command, "--help")
    assert result.code == 0
    assert "--help" in result.out and "<bool>" not in result.out
