"""B-tag (CPU): WD14 tagging of 200 images — Atelier's cached, batched session vs a new session per image.

The peer is what the common tagger node does per image: create an onnxruntime InferenceSession, preprocess, run one
image, pick tags. Ours is core.tagger: one cached session per model, batches of 8. Both tag the same 200 images in
this one process and must produce the same captions. Two models, both built here (no downloads): the tiny test
model (session start-up dominates) and a medium synthetic one shaped like a real tagger's work (448² input, conv
stem, ~9k tags, ~20M parameters). Usage: python benchmarks/bench_tagger.py [--images 200] [--repeats 3]
"""

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: E402,F401  registers this checkout as the package `atelier`
from tiny_tagger import write_tiny_tagger  # noqa: E402

from atelier.core import __version__  # noqa: E402
from atelier.core import tagger as tg  # noqa: E402


def write_medium_model(folder: Path, size: int = 448, tags: int = 9083, seed: int = 0) -> Path:
    """NHWC 448² → transpose → 3 strided convs (3→32→64→128) → global pool → dense 128→2048→tags → sigmoid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def w(name, *shape, scale=0.05):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [helper.make_node("Transpose", ["input_1:0"], ["x0"], perm=[0, 3, 1, 2]),
             helper.make_node("Mul", ["x0", "inv255"], ["x1"])]
    inits = [numpy_helper.from_array(np.array(1 / 255, np.float32), "inv255")]
    prev, chans = "x1", [3, 32, 64, 128]
    for i in range(3):
        nodes += [helper.make_node("Conv", [prev, f"cw{i}", f"cb{i}"], [f"c{i}"], strides=[4, 4] if i == 0 else [2, 2],
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        inits += [w(f"cw{i}", chans[i + 1], chans[i], 3, 3), w(f"cb{i}", chans[i + 1])]
        prev = f"r{i}"
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["gp"]),
              helper.make_node("Flatten", ["gp"], ["f"]),
              helper.make_node("Gemm", ["f", "d1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
              helper.make_node("Gemm", ["hr", "d2", "b2"], ["logits"]),
              helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"])]
    inits += [w("d1", 128, 2048), w("b1", 2048), w("d2", 2048, tags), w("b2", tags)]
    graph = helper.make_graph(nodes, "medium_wd14",
                              [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["N", size, size, 3])],
                              [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["N", tags])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    cats = [9] * 4 + [0] * (tags - 4 - 500) + [4] * 500
    rows = ["tag_id,name,category,count"] + [f"{i},tag_{i},{c},1" for i, c in enumerate(cats)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")
    return folder


def peer(model_dir: Path, images, options: tg.TagOptions) -> list[str]:
    """A new session per image, as the common node does."""
    import onnxruntime as ort

    table = tg.load_tag_table(model_dir / "selected_tags.csv")
    out = []
    for img in images:
        session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        x = tg.preprocess(img, inp.shape[1])[None]
        probs = session.run(None, {inp.name: x})[0][0]
        out.append(options.caption(probs, table)[0])
    return out


def ours(model_dir: Path, images, options: tg.TagOptions, batch_size: int = 8) -> list[str]:
    tagger = tg.load_tagger(model_dir, device="cpu")
    return [text for text, _ in tg.tag_images(tagger, images, options, batch_size)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median is reported")
    args = ap.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).resize((512, 512), Image.BICUBIC)
              for _ in range(args.images)]
    options = tg.TagOptions(general_threshold=0.35)
    with tempfile.TemporaryDirectory() as tmp:
        models = {"tiny (14 tags, 32²)": write_tiny_tagger(Path(tmp) / "tiny"),
                  "medium (9,083 tags, 448², ~19M params)": write_medium_model(Path(tmp) / "medium")}
        for label, folder in models.items():
            peer(folder, images[:2], options)  # warm caches for both sides
            runs_peer, runs_ours = [], []
            for _ in range(args.repeats):  # alternate the sides; report each side's median
                t = time.perf_counter()
                a = peer(folder, images, options)
                runs_peer.append(time.perf_counter() - t)
                tg._CACHE.clear()  # ours pays its one session creation inside the timing
                t = time.perf_counter()
                b = ours(folder, images, options)
                runs_ours.append(time.perf_counter() - t)
            t_peer, t_ours = float(np.median(runs_peer)), float(np.median(runs_ours))
            same = sum(x == y for x, y in zip(a, b))
            print(f"{label}: peer {t_peer:.2f} s ({args.images / t_peer:.1f} img/s), ours {t_ours:.2f} s "
                  f"({args.images / t_ours:.1f} img/s), ratio {t_peer / t_ours:.1f}x (goal >= 3x); "
                  f"identical captions {same}/{len(a)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; Atelier {__version__}, onnxruntime "
          f"{ort.__version__}, numpy {np.__version__}, Python {platform.python_version()}")


if __name__ == "__main__":
    main()
