"""Builds a tiny, real WD14-shaped ONNX tagger for tests and benchmarks (onnx.helper; no downloads).

Graph: image (N, S, S, 3) BGR 0..255 → mean over H, W → (N, 3) → MatMul (3, T) + bias → Sigmoid → (N, T).
Weights make colour tags answer to the mean colour *in BGR order*, so a blue image lights "blue" only when the
tagger really feeds BGR; a transparent image lights "white_background" only when alpha goes onto white.
"""

from pathlib import Path

import numpy as np

# (name, category, weights on mean B, G, R (0..255), bias)
TAGS = [
    ("general", 9, (0.0, 0.0, 0.0), 2.0),
    ("sensitive", 9, (0.0, 0.0, 0.0), -2.0),
    ("questionable", 9, (0.0, 0.0, 0.0), -3.0),
    ("explicit", 9, (0.0, 0.0, 0.0), -4.0),
    ("blue", 0, (0.04, -0.04, -0.04), -5.0),
    ("red", 0, (-0.04, -0.04, 0.04), -5.0),
    ("green", 0, (-0.04, 0.04, -0.04), -5.0),
    ("white_background", 0, (0.02, 0.02, 0.02), -12.0),
    ("long_hair", 0, (0.0, 0.0, 0.0), 1.0),  # always ~0.73
    ("^_^", 0, (0.0, 0.0, 0.0), 0.5),  # always ~0.62
    ("smile_(happy)", 0, (0.0, 0.0, 0.0), 0.2),  # always ~0.55
    ("faint", 0, (0.0, 0.0, 0.0), -1.0),  # always ~0.27
    ("hatsune_miku", 4, (0.0, 0.0, 0.0), 2.5),  # always ~0.92
    ("other_character", 4, (0.0, 0.0, 0.0), -1.5),
]


def write_tiny_tagger(folder: Path, size: int = 32, batch_dim="N", input_shape=None, csv_header=None,
                      write_csv: bool = True) -> Path:
    """Writes model.onnx + selected_tags.csv into `folder`; knobs produce the broken variants tests need."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = np.array([t[2] for t in TAGS], dtype=np.float32).T  # (3, T)
    bias = np.array([t[3] for t in TAGS], dtype=np.float32)  # (T,)
    shape = input_shape or [batch_dim, size, size, 3]
    axes = [2, 3] if shape[1] == 3 else [1, 2]  # average over H, W in either layout (NCHW variant for bad-input tests)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input_1:0", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
        ],
        "tiny_wd14",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [shape[0], len(TAGS)])],
        [numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes"),
         numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # readable by every onnxruntime since 1.14
    onnx.save(model, str(folder / "model.onnx"))
    if write_csv:
        header = csv_header or "tag_id,name,category,count"
        rows = [header] + [f"{i},{name},{cat},{1000 - i}" for i, (name, cat, _, _) in enumerate(TAGS)]
        (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def tagger_widgets(model, **overrides):
    """The WD14 nodes' widgets with test defaults (thresholds the tiny model crosses)."""
    w = dict(model=model, general_threshold=0.5, character_threshold=0.85, general_mcut=False, character_mcut=False,
             include_characters=True, escape_brackets=True, underscores_to_spaces=True, exclude_tags="",
             sort="confidence", batch_size=4, device="auto")
    w.update(overrides)
    return w
