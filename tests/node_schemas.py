"""Reads Atelier's node schemas from the source of nodes/ without importing ComfyUI (shared by both tiers)."""

import ast
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class NodeSchema:
    node_id: str
    display_name: str | None
    category: str | None
    file: str
    inputs_without_tooltip: list[str] = field(default_factory=list)


def node_files(folder: Path = ROOT / "nodes") -> list[Path]:
    """Every .py file under nodes/, sub-folders included, so a node moved into a sub-package is still checked."""
    return sorted(folder.rglob("*.py"))


def inputs_without_tooltip(folder: Path = ROOT / "nodes") -> list[str]:
    """Every `X.Input(...)` call anywhere in nodes/ and its sub-folders (helpers included) that passes no tooltip."""
    missing = []
    for path in node_files(folder):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for call in ast.walk(tree):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "Input"
                    and not any(kw.arg == "tooltip" for kw in call.keywords)):
                missing.append(f"{path.relative_to(folder).as_posix()}:{call.lineno}")
    return missing


def _const(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name and isinstance(kw.value, ast.Constant):
            return kw.value.value
    return None


def scan_nodes(folder: Path = ROOT / "nodes") -> list[NodeSchema]:
    """Every io.Schema(...) call in nodes/ and its sub-folders with its id, display name, category and untooltipped
    inputs."""
    found = []
    for path in node_files(folder):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for call in [n for n in ast.walk(tree) if isinstance(n, ast.Call)]:
            if not (isinstance(call.func, ast.Attribute) and call.func.attr == "Schema"):
                continue
            schema = NodeSchema(_const(call, "node_id"), _const(call, "display_name"), _const(call, "category"),
                                path.relative_to(folder).as_posix())
            for inner in ast.walk(call):
                if (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                        and inner.func.attr == "Input" and not any(kw.arg == "tooltip" for kw in inner.keywords)):
                    name = inner.args[0].value if inner.args and isinstance(inner.args[0], ast.Constant) else "?"
                    schema.inputs_without_tooltip.append(name)
            found.append(schema)
    return found


def numeric_inputs_without_range(folder: Path = ROOT / "nodes") -> list[str]:
    """Every `io.Int.Input(...)` / `io.Float.Input(...)` in nodes/ (sub-folders too) that lacks min= or max=."""
    missing = []
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for call in ast.walk(tree):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "Input"
                    and isinstance(call.func.value, ast.Attribute) and call.func.value.attr in ("Int", "Float")
                    and not {"min", "max"} <= {kw.arg for kw in call.keywords}):
                missing.append(f"{path.name}:{call.lineno}")
    return missing
