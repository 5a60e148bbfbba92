"""Every node type and widget an example workflow uses still exists, with the names and count the workflow saved
(ComfyUI reads widgets_values by position, so a renamed, added or removed widget shifts every value after it)."""

import json

import pytest
from comfy_host import ROOT

EXAMPLES = sorted((ROOT / "example_workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # drawn by the editor, never sent to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def widget_names(spec: dict) -> list[str]:
    """The widgets the editor makes for a node of /object_info `spec`, in order (a seed's control counts too)."""
    names = []
    for section in ("required", "optional"):
        for name, value in spec["input"].get(section, {}).items():
            kind, options = value[0], (value[1] if len(value) > 1 else {})
            if not (isinstance(kind, list) or kind in WIDGET_TYPES) or options.get("forceInput"):
                continue  # a socket (MODEL, ATELIER_DATASET, ...), not a widget
            names.append(name)
            if options.get("control_after_generate"):
                names.append("control_after_generate")
    return names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_uses_only_nodes_and_widgets_that_exist(comfy, path):
    info = comfy.object_info()
    for node in json.loads(path.read_text(encoding="utf-8"))["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        where = f"example_workflows/{path.name} node {node['id']} ('{node.get('title', node['type'])}')"
        assert node["type"] in info, (f"{where} is of type '{node['type']}', which the server no longer has; "
                                      "update tests/browser/example_specs.py and rerun make_examples.py")
        names = widget_names(info[node["type"]])
        saved = node.get("widgets_values") or []
        assert len(saved) == len(names), (f"{where} saved {len(saved)} widget values but the node now has "
                                          f"{len(names)} widgets {names}; rerun tests/browser/make_examples.py")
        # the editor (frontend 1.27) also saves each widget as an input slot by name: a rename at the same position
        # keeps the count but not the names
        saved_names = [entry["widget"]["name"] for entry in node.get("inputs", []) if entry.get("widget")]
        current = [n for n in names if n != "control_after_generate"]
        assert saved_names == current, (f"{where} saved widgets {saved_names} but the node now has {current}; "
                                        "rerun tests/browser/make_examples.py")
