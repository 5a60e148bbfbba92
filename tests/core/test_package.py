"""Package-level promises: layout, metadata, registration, and node conventions, checked without ComfyUI."""

import asyncio
import re
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import atelier
from atelier.core import __version__
from atelier.core.report import describe_images
from node_schemas import inputs_without_tooltip, numeric_inputs_without_range, scan_nodes

ROOT = Path(__file__).resolve().parents[2]


def test_design_card_layout():
    for name in ("__init__.py", "nodes", "trainers", "web", "tests", "pyproject.toml", "example_workflows", "core",
                 "README.md", "LICENSE", ".ci/run", "benchmarks/README.md", "requirements.txt"):
        assert (ROOT / name).exists(), name
    license_text = (ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in license_text and "Version 3" in license_text


def test_root_package_is_cheap_and_registers_v3():
    assert atelier.WEB_DIRECTORY == "./web" and (ROOT / "web").is_dir()
    assert asyncio.iscoroutinefunction(atelier.comfy_entrypoint)
    assert not any(m == "comfy" or m.startswith("comfy.") or m == "comfy_api" for m in sys.modules), \
        "importing the package pulled in ComfyUI"


def test_pyproject_metadata():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["version"] == __version__
    assert "GNU General Public License v3 (GPLv3)" in " ".join(project["classifiers"])
    deps = " ".join(project["dependencies"]).lower()
    for dep in ("numpy", "pillow", "safetensors", "kornia", "einops"):
        assert dep in deps
    assert "onnxruntime" in " ".join(project["optional-dependencies"]["tagger"])
    assert "pytest" in " ".join(project["optional-dependencies"]["test"])
    comfy = meta["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"] == "Atelier" and "Icon" in comfy


@pytest.mark.parametrize("path", ["requirements.txt", "pyproject.toml"])
def test_torch_is_never_a_requirement(path):
    text = (ROOT / path).read_text()
    lines = [l.split("#")[0].strip().strip('",') for l in text.splitlines()]
    assert not [l for l in lines if re.match(r"^(torch|torchvision|torchaudio)\b", l)], f"{path} must not list torch"


def test_package_uses_relative_imports_only():
    own = {"core", "trainers", "nodes", "atelier"}
    for path in list(ROOT.glob("*.py")) + [p for d in own - {"atelier"} for p in (ROOT / d).rglob("*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            m = re.match(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", line)
            assert not (m and m.group(1) in own), f"{path.relative_to(ROOT)}:{n} imports {m.group(1)} absolutely"


def test_node_conventions():
    schemas = scan_nodes()
    assert schemas
    ids = [s.node_id for s in schemas]
    assert len(ids) == len(set(ids)), "duplicate node ids"
    for s in schemas:
        assert re.fullmatch(r"Atelier[A-Z][A-Za-z0-9]+", s.node_id or ""), s
        assert (s.display_name or "").endswith(" (Atelier)"), s
        assert (s.category or "").startswith("atelier/"), s
        assert s.inputs_without_tooltip == [], f"{s.node_id}: inputs without tooltip {s.inputs_without_tooltip}"
    assert inputs_without_tooltip() == []


def test_every_numeric_widget_has_its_real_range():
    """min and max on every Int / Float input, so the frontend and ComfyUI's validation refuse bad values before
    queueing (the Advanced node's widgets take theirs from CONFIG_RANGES / NETWORK_RANGES)."""
    assert numeric_inputs_without_range() == []


def test_node_scans_walk_sub_folders(tmp_path):
    nested = tmp_path / "lora" / "tools.py"
    nested.parent.mkdir()
    nested.write_text('io.Schema(node_id="AtelierX", inputs=[io.Int.Input("rank", default=4)])\n', encoding="utf-8")
    (tmp_path / "top.py").write_text('io.Schema(node_id="AtelierY", inputs=[])\n', encoding="utf-8")
    found = {s.node_id: s for s in scan_nodes(tmp_path)}
    assert set(found) == {"AtelierX", "AtelierY"}
    assert found["AtelierX"].file == "lora/tools.py" and found["AtelierX"].inputs_without_tooltip == ["rank"]
    assert inputs_without_tooltip(tmp_path) == ["lora/tools.py:1"]


def test_every_sub_package_ships_in_the_wheel():
    # setuptools' packages.find cannot prefix what it finds under a root mapped to a name (package-dir atelier = "."):
    # it would ship core/ as a top-level package. So the list is explicit, and this keeps it complete.
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"atelier": "."}
    folders = {p.parent for d in ("core", "trainers", "nodes") for p in (ROOT / d).rglob("*.py")}
    without_init = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists())
    assert without_init == [], f"folders of Python files without __init__.py (left out of a wheel): {without_init}"
    packages = {"atelier"} | {".".join(("atelier",) + f.relative_to(ROOT).parts) for f in folders}
    assert sorted(setuptools["packages"]) == sorted(packages), "list every package in pyproject.toml's packages"


def test_describe_images():
    images = torch.zeros(2, 48, 64, 3)
    images[1, 0, 0, 0] = 1.0
    assert describe_images(images) == "images: 2 × 64×48, 3 channels, values 0.000..1.000"
    with pytest.raises(ValueError, match=r"\(B, H, W, C\).*\(3, 4\)"):
        describe_images(torch.zeros(3, 4))


def test_node_functions_stay_wiring_sized():
    """nodes/ reads like wiring: no function there grows past ~60 lines (the logic lives in core/ and trainers/)."""
    import ast

    long = []
    for path in sorted((ROOT / "nodes").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
