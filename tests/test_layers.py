"""The package layout is the architecture (docs/DESIGN.md "Map"): these rules fail the build
when an import crosses a layer the wrong way.

- the kernel imports nothing of twinloop above it;
- ``serving`` (Active) and ``learning`` (Shadow) never import each other;
- ``release`` (the bridge) imports neither loop;
- the product never imports the showcase, the API or the CLI;
- only entry points, and the serving facade a server composes from it, use a
  :class:`~twinloop.runtime.Runtime` (dependencies are passed explicitly below them).

Every import counts, including those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "twinloop"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            names = [f"{name}.{a.name}" for a in node.names]
            found.update(n for n in [name, *names] if n.startswith("twinloop"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("twinloop"))
    return found


MODULES = {_module(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "twinloop"


def _crossings(layer: str, forbidden: set[str], allow: set[str] = frozenset()) -> list[str]:
    bad = []
    for mod, deps in MODULES.items():
        if _layer(mod) != layer or mod in allow:
            continue
        for dep in sorted(deps):
            if _layer(dep) in forbidden and dep not in allow:
                bad.append(f"{mod} imports {dep}")
    return bad


LOOPS_AND_ABOVE = {"serving", "learning", "release", "api", "cli", "showcase", "runtime"}
ABOVE_PRODUCT = {"api", "cli", "showcase"}

RULES = [
    # (layer, layers it must not import, why)
    ("kernel", {"foundation", "knowledge", "routing", *LOOPS_AND_ABOVE}, "the kernel is the bottom layer"),
    ("foundation", {"knowledge", "routing", *LOOPS_AND_ABOVE}, "models know nothing of documents or loops"),
    ("knowledge", {"routing", *LOOPS_AND_ABOVE}, "documents and indexes sit below both loops"),
    ("routing", LOOPS_AND_ABOVE, "the router sits below both loops"),
    ("release", {"serving", "learning", *ABOVE_PRODUCT, "runtime"}, "release is the bridge: it imports neither loop"),
    ("serving", {"learning", *ABOVE_PRODUCT}, "Active never imports Shadow"),
    ("learning", {"serving", *ABOVE_PRODUCT}, "Shadow never imports Active"),
    ("api", {"showcase", "cli"}, "the API serves the product only"),
]


@pytest.mark.parametrize("layer,forbidden,why", RULES, ids=[r[0] for r in RULES])
def test_layer_imports(layer, forbidden, why):
    assert _layer_exists(layer), f"no package {layer!r}"
    assert _crossings(layer, forbidden) == [], why


def _layer_exists(layer: str) -> bool:
    return any(_layer(m) == layer for m in MODULES)


def test_only_entry_points_build_a_runtime():
    """Below the entry points, dependencies are passed explicitly, never a service locator.

    The Shadow worker's ``main`` is the entry point of its own process (``python -m
    twinloop.learning.worker``), so it may build one; the serving facade is what a server
    process composes from its runtime, and hands explicit pieces to everything below it.
    """
    entry = {"api", "cli", "showcase"}
    allowed = {"twinloop.learning.worker", "twinloop.serving.service", "twinloop.runtime", "twinloop.__main__"}
    bad = [m for m, deps in MODULES.items()
           if any(d.startswith("twinloop.runtime") for d in deps) and _layer(m) not in entry and m not in allowed]
    assert bad == []


def test_no_import_cycle_between_cli_modules():
    cli = {m: {d for d in deps if d.startswith("twinloop.cli")} for m, deps in MODULES.items()
           if m.startswith("twinloop.cli.")}
    for mod, deps in cli.items():
        for dep in deps:
            target = dep if dep in MODULES else dep.rpartition(".")[0]
            assert mod not in {t if t in MODULES else t.rpartition(".")[0] for t in cli.get(target, set())}, \
                f"{mod} and {target} import each other"


def test_kernel_is_importable_alone():
    """A fresh interpreter imports the kernel without loading torch or any layer above."""
    import subprocess
    import sys

    code = ("import sys, importlib, pkgutil, twinloop.kernel as k\n"
            "for m in pkgutil.iter_modules(k.__path__): importlib.import_module('twinloop.kernel.' + m.name)\n"
            "above = sorted(n for n in sys.modules if n.startswith('twinloop.') and not n.startswith('twinloop.kernel'))\n"
            "print(above, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[] False"
