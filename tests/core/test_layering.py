"""The seam: core/ and trainers/ never import ComfyUI, so CI (which has none) can test all the logic."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "node_helpers", "server",
                "nodes", "execution", "latent_preview"}


def host_imports(source: str, filename: str = "<src>") -> list[str]:
    """Lines of `source` that import a host module: absolute (`import comfy.sd`), relative into our own nodes/
    (`from ..nodes import x`), or by name through importlib / __import__."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            elif node.level >= 2 and (node.module or "").split(".")[0] == "nodes":
                names = ["nodes (relative)"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(
                node.args[0].value, str):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if fname in ("import_module", "__import__"):
                names = [node.args[0].value]
        for name in names:
            top = name.split(".")[0].split(" ")[0]
            if top in HOST_MODULES:
                found.append(f"{filename}:{node.lineno}: {name}")
    return found


def pure_files() -> list[Path]:
    return sorted(p for d in ("core", "trainers") for p in (ROOT / d).rglob("*.py"))


def test_pure_layers_exist():
    assert (ROOT / "core" / "__init__.py").is_file() and (ROOT / "trainers" / "__init__.py").is_file()
    assert len(pure_files()) >= 2


def test_core_and_trainers_import_no_host_module():
    offenders = [hit for p in pure_files()
                 for hit in host_imports(p.read_text(encoding="utf-8"), str(p.relative_to(ROOT)))]
    assert offenders == [], "core/ and trainers/ must not import ComfyUI:\n" + "\n".join(offenders)


@pytest.mark.parametrize("line", [
    "import comfy",
    "import comfy.sd as sd",
    "from comfy.model_management import get_torch_device",
    "import folder_paths",
    "from comfy_api.latest import io",
    "from server import PromptServer",
    "import node_helpers",
    "from ..nodes import info",
    "importlib.import_module('comfy.utils')",
    "def f():\n    import comfy_extras.nodes_train",
])
def test_checker_catches_each_host_import(line):
    assert host_imports(line), f"layering checker missed: {line!r}"


@pytest.mark.parametrize("line", ["import torch", "from . import images", "from .lora import keys",
                                  "import comfyish", "from ..core import images"])
def test_checker_allows_pure_imports(line):
    assert host_imports(line) == []
