"""The layers point one way (DESIGN.md): modules ← models ← tasks/criterions ← training ← cli, and no import cycle.

Every ``from fairseq_lite.X`` / ``import fairseq_lite.X`` in the package, at module level or inside a function, is
read with ``ast``; each package may use only what lies below it. Then every module is imported on its own,
first, in a fresh module table, which fails on an import cycle whatever the import order elsewhere.
"""

import ast
import os
import subprocess
import sys

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fairseq_lite")

#: What each package must not import (fairseq_lite subpackages, or third-party configuration libraries).
FORBIDDEN = {
    "modules": {"dataclass", "models", "tasks", "criterions", "optim", "training", "cli", "interop", "data",
                "decoding", "omegaconf", "hydra", "recipes"},
    "models": {"tasks", "criterions", "optim", "training", "cli", "omegaconf", "hydra", "recipes"},
    "data": {"models", "tasks", "criterions", "training", "cli", "interop", "hydra", "recipes"},
    "decoding": {"models", "tasks", "criterions", "training", "cli", "interop", "hydra", "recipes"},
    "tasks": {"training", "cli", "hydra", "recipes"},
    "criterions": {"training", "cli", "hydra", "recipes"},
    "optim": {"models", "tasks", "criterions", "training", "cli", "interop", "hydra", "recipes"},
    "interop": {"training", "cli", "tasks", "criterions", "hydra", "recipes"},
    "training": {"cli", "hydra", "recipes"},
    "cli": {"recipes"},  # recipes (fairseq2-style commands) sit above cli
}


def _modules():
    for root, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                yield path, rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path):
    """The top-level names a file imports: 'models' for fairseq_lite.models.x, 'omegaconf' for omegaconf."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            yield (parts[1] if len(parts) > 1 else "") if parts[0] == "fairseq_lite" else parts[0]


def test_each_layer_imports_only_what_lies_below_it():
    wrong = []
    for path, module in _modules():
        layer = module.split(".")[1] if module.count(".") >= 1 else ""
        for name in set(_imports(path)) & FORBIDDEN.get(layer, set()):
            wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_every_module_imports_first_without_a_cycle():
    modules = [module for _, module in _modules()]
    script = (
        "import importlib, sys\n"
        "failed = []\n"
        f"for name in {modules!r}:\n"
        "    for key in [k for k in sys.modules if k == 'fairseq_lite' or k.startswith('fairseq_lite.')]:\n"
        "        del sys.modules[key]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as exc:\n"
        "        failed.append(f'{name}: {exc}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
