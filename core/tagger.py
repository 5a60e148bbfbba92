"""WD14 tagger (SmilingWolf's ONNX booru taggers): one cached session per model, batched inference, tag selection.

Nothing here knows ComfyUI. A model folder holds `model.onnx` and `selected_tags.csv` (tag_id,name,category,count;
category 0 general, 4 character, 9 rating). The models take NHWC float32 BGR images in 0..255, padded to a white
square; their last layer is a sigmoid, so outputs are per-tag probabilities. onnxruntime is an optional
dependency: without it, loading a model raises TaggerUnavailable saying how to install it.
"""

from __future__ import annotations

import csv
import io
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .captions import dedupe_tags, join_tags, split_tags
from .dataset import drop_sources, map_subsets
from .images import ImageRejected, open_image, to_rgb
from .paths import Root, read_bytes_inside, resolve_in_roots

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
TAG_COLUMNS = ("tag_id", "name", "category", "count")
GENERAL, CHARACTER, RATING = 0, 4, 9
SORT_ORDERS = ("confidence", "alphabetical")
# Booru tags whose underscore is part of the face, not a word separator: keep them as written.
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
                     ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})
INSTALL_HINT = ("The WD14 tagger needs onnxruntime, which is not installed. Install it into ComfyUI's Python "
                "(`python -m pip install onnxruntime`, or onnxruntime-gpu for CUDA) and restart ComfyUI.")


class TaggerError(ValueError):
    """A model folder, tag table or ONNX graph the tagger cannot use; the message names the file."""


class TaggerUnavailable(RuntimeError):
    """onnxruntime is not installed."""


@dataclass(frozen=True)
class TagTable:
    names: tuple[str, ...]
    categories: np.ndarray  # (T,) int

    def __len__(self) -> int:
        return len(self.names)


TAGS_FILE_LIMIT = 64 << 20  # selected_tags.csv is about 300 KB


def _model_roots(path: Path, roots: list[Root] | None) -> list[Root]:
    return roots or [Root("model folder", path.parent)]


def load_tag_table(path: str | Path, roots: list[Root] | None = None) -> TagTable:
    """Reads selected_tags.csv (inside `roots` when opened); refuses a file without the tag_id,name,category,count
    header or with bad rows."""
    path = Path(path)
    if not path.is_file():
        raise TaggerError(f"Tag list '{path.name}' is missing; a WD14 model folder needs {MODEL_FILE} and "
                          f"{TAGS_FILE} (download both from the model's page).")
    try:
        text = read_bytes_inside(path, _model_roots(path, roots), "tag list", TAGS_FILE_LIMIT).decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaggerError(f"Tag list '{path.name}' is not UTF-8 ({e}); download it again.") from None
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("name", "category") if c not in (reader.fieldnames or [])]
        if missing:
            raise TaggerError(f"Tag list '{path.name}' has columns {reader.fieldnames}; expected "
                              f"{','.join(TAG_COLUMNS)} (missing: {', '.join(missing)}).")
        names, cats = [], []
        for n, row in enumerate(reader, 2):
            try:
                cats.append(int(row["category"]))
            except (TypeError, ValueError):
                raise TaggerError(f"Tag list '{path.name}' line {n}: category '{row['category']}' is not a "
                                  "number.") from None
            names.append(row["name"])
    if not names:
        raise TaggerError(f"Tag list '{path.name}' has no tags.")
    return TagTable(tuple(names), np.asarray(cats, dtype=np.int64))


@dataclass
class Tagger:
    """A loaded model: its onnxruntime session, input name and size, and the tag table its outputs index."""

    session: object
    input_name: str
    size: int
    max_batch: int | None  # None: any batch size; 1 when the graph's batch dimension is fixed
    table: TagTable
    providers: tuple[str, ...] = ()
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_CACHE: dict[tuple, Tagger] = {}
_CACHE_LOCK = threading.Lock()


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise TaggerUnavailable(INSTALL_HINT) from None
    return onnxruntime


def choose_providers(available: list[str], device: str = "auto") -> list[str]:
    """auto: CUDA (then DirectML, CoreML) when onnxruntime offers it, CPU always last as the fallback."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    preferred = ["CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"]
    return [p for p in preferred if p in available] + ["CPUExecutionProvider"]


def _input_geometry(session, model_path: Path) -> tuple[str, int, int | None]:
    """Name, square size and batch limit of the graph's image input; refuses anything but (N, S, S, 3)."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise TaggerError(f"'{model_path}' has {len(inputs)} inputs; a WD14 tagger has one image input.")
    shape = list(inputs[0].shape)
    ok = len(shape) == 4 and shape[3] == 3 and isinstance(shape[1], int) and shape[1] == shape[2] and shape[1] > 0
    if not ok:
        raise TaggerError(f"'{model_path}' expects input shape {shape}; a WD14 tagger takes (batch, size, size, 3) "
                          "NHWC images. Is this a WD14 model?")
    max_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return inputs[0].name, shape[1], max_batch


def model_files(path: str | Path) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) of a model folder, or of a flat '<name>.onnx' with its '<name>.csv' beside it."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return path, path.with_suffix(".csv")
    return path / MODEL_FILE, path / TAGS_FILE


def list_models(roots: list[Path]) -> list[str]:
    """Names of the models under the roots: folders holding model.onnx, and flat .onnx files with a .csv beside them."""
    found = set()
    for root in roots:
        if not Path(root).is_dir():
            continue
        for entry in sorted(Path(root).iterdir()):
            if entry.is_dir() and (entry / MODEL_FILE).is_file():
                found.add(entry.name)
            elif entry.suffix.lower() == ".onnx" and entry.with_suffix(".csv").is_file():
                found.add(entry.name)
    return sorted(found)


def load_tagger(model_dir: str | Path, device: str = "auto", roots: list[Root] | None = None) -> Tagger:
    """The cached tagger for a model folder (one session per model file and device; reloaded if the file changes).
    Both files are read through handles checked to lie inside `roots` (default: the folder the model is in)."""
    model_path, tags_path = model_files(model_dir)
    roots = _model_roots(Path(model_dir), roots)
    if not model_path.is_file():
        raise TaggerError(f"Model folder '{Path(model_dir).name}' has no {MODEL_FILE}; a WD14 model folder holds "
                          f"{MODEL_FILE} and {TAGS_FILE} (or use '<name>.onnx' with '<name>.csv' beside it).")
    resolve_in_roots(model_path, roots, "tagger model")
    stat = model_path.stat()
    key = (str(model_path.resolve()), stat.st_mtime_ns, stat.st_size, device)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    table = load_tag_table(tags_path, roots)
    ort = _onnxruntime()
    providers = choose_providers(ort.get_available_providers(), device)
    model_bytes = read_bytes_inside(model_path, roots, "tagger model")  # the bytes of the checked file, not a path
    try:
        session = ort.InferenceSession(model_bytes, providers=providers)
    except Exception as e:  # noqa: BLE001 - a GPU provider that fails to start falls back to the CPU below
        if providers == ["CPUExecutionProvider"]:
            raise TaggerError(f"onnxruntime cannot load '{model_path.name}': {e}") from None
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name, size, max_batch = _input_geometry(session, model_path)
    outputs = session.get_outputs()
    width = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if isinstance(width, int) and width != len(table):
        raise TaggerError(f"'{model_path}' outputs {width} tags but '{TAGS_FILE}' lists {len(table)}; the two files "
                          "come from different models.")
    tagger = Tagger(session, name, size, max_batch, table, tuple(session.get_providers()))
    with _CACHE_LOCK:
        for old in [k for k in _CACHE if k[0] == key[0] and k[3] == device]:
            del _CACHE[old]  # the model file changed: drop the stale session
        _CACHE[key] = tagger
    return tagger


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    """WD14 input for one image: alpha onto white, centred on a white square, resized, BGR float32 0..255 (S, S, 3)."""
    rgb, _ = to_rgb(img, (255, 255, 255))
    side = max(rgb.size)
    square = rgb
    if rgb.width != rgb.height:  # already square: no canvas to pad onto
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC if side < size else Image.Resampling.BOX)
    arr = np.asarray(square, dtype=np.float32)  # (S, S, 3) RGB
    return np.ascontiguousarray(arr[:, :, ::-1])  # the models were trained on BGR (OpenCV) input


def predict(tagger: Tagger, images: list[Image.Image], batch_size: int = 8) -> np.ndarray:
    """Per-tag probabilities (N, T) for a list of images, run in batches on the cached session."""
    if not images:
        return np.zeros((0, len(tagger.table)), dtype=np.float32)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    step = min(batch_size, tagger.max_batch or batch_size)
    out = []
    # Pillow resamples with the GIL released, so a batch is preprocessed on threads while the order is kept.
    with ThreadPoolExecutor(max_workers=min(step, os.cpu_count() or 1), thread_name_prefix="atelier-wd14") as pool:
        for i in range(0, len(images), step):
            batch = np.stack(list(pool.map(lambda im: preprocess(im, tagger.size), images[i:i + step])))  # (b,S,S,3)
            with tagger.lock:  # one run at a time per session keeps memory predictable
                probs = tagger.session.run(None, {tagger.input_name: batch})[0]
            out.append(np.asarray(probs, dtype=np.float32).reshape(len(batch), -1))
    probs = np.concatenate(out)
    if probs.shape[1] != len(tagger.table):
        raise TaggerError(f"The model returned {probs.shape[1]} scores per image but the tag list has "
                          f"{len(tagger.table)} tags.")
    return probs


def mcut_threshold(probs: np.ndarray) -> float:
    """Maximum Cut Thresholding (Largeron et al., 2012): the midpoint of the largest gap between sorted scores."""
    values = np.sort(np.asarray(probs, dtype=np.float64))[::-1]
    if values.size < 2:
        return float(values[0]) if values.size else 1.0
    gaps = values[:-1] - values[1:]
    t = int(np.argmax(gaps))
    return float((values[t] + values[t + 1]) / 2)


@dataclass
class TagResult:
    general: list[tuple[str, float]]  # above the general threshold, by confidence
    characters: list[tuple[str, float]]
    rating: tuple[str, float] | None
    thresholds: dict[str, float]

    def probabilities(self) -> dict:
        return {"general": dict(self.general), "character": dict(self.characters),
                "rating": dict([self.rating]) if self.rating else {}, "thresholds": self.thresholds}


def select_tags(probs: np.ndarray, table: TagTable, general_threshold: float = 0.35,
                character_threshold: float = 0.85, general_mcut: bool = False, character_mcut: bool = False
                ) -> TagResult:
    """Tags of one image: general and character tags above their thresholds (or MCut), and the top rating."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)  # (T,)
    cats = table.categories
    result = {}
    thresholds = {}
    for name, cat, threshold, mcut, floor in (("general", GENERAL, general_threshold, general_mcut, 0.0),
                                               ("character", CHARACTER, character_threshold, character_mcut, 0.15)):
        idx = np.flatnonzero(cats == cat)
        if mcut and idx.size:
            threshold = max(mcut_threshold(probs[idx]), floor)  # character MCut never goes below 0.15
        thresholds[name] = float(threshold)
        chosen = idx[probs[idx] > threshold]
        order = chosen[np.argsort(-probs[chosen], kind="stable")]
        result[name] = [(table.names[i], float(probs[i])) for i in order]
    ratings = np.flatnonzero(cats == RATING)
    rating = None
    if ratings.size:
        best = ratings[int(np.argmax(probs[ratings]))]
        rating = (table.names[best], float(probs[best]))
    return TagResult(result["general"], result["character"], rating, thresholds)


def format_tag(tag: str, escape: bool = True, underscores_to_spaces: bool = True) -> str:
    """Booru tag as caption text: '_' → ' ' (not in kaomoji like '^_^'), parentheses escaped for prompt syntax."""
    if underscores_to_spaces and tag not in KAOMOJI:
        tag = tag.replace("_", " ")
    if escape:
        tag = tag.replace("(", "\\(").replace(")", "\\)")
    return tag


def caption_from_result(result: TagResult, *, include_characters: bool = True, escape: bool = True,
                        underscores_to_spaces: bool = True, exclude: list[str] | None = None,
                        sort: str = "confidence") -> str:
    """The caption text: character tags first, then general tags, formatted, without excluded tags."""
    if sort not in SORT_ORDERS:
        raise ValueError(f"Unknown sort '{sort}'; expected one of {', '.join(SORT_ORDERS)}.")
    excluded = {e.strip().lower().replace(" ", "_") for e in (exclude or []) if e.strip()}
    groups = [result.characters, result.general] if include_characters else [result.general]
    tags = []
    for group in groups:
        names = [n for n, _ in group if n.lower() not in excluded]
        tags += sorted(names, key=str.lower) if sort == "alphabetical" else names
    return ", ".join(format_tag(t, escape, underscores_to_spaces) for t in tags)


@dataclass(frozen=True)
class TagOptions:
    """Everything that turns scores into a caption; one value per widget of the tagger nodes."""

    general_threshold: float = 0.35
    character_threshold: float = 0.85
    general_mcut: bool = False
    character_mcut: bool = False
    include_characters: bool = True
    escape_brackets: bool = True
    underscores_to_spaces: bool = True
    exclude: tuple[str, ...] = ()
    sort: str = "confidence"

    def caption(self, probs: np.ndarray, table: TagTable) -> tuple[str, TagResult]:
        result = select_tags(probs, table, self.general_threshold, self.character_threshold, self.general_mcut,
                             self.character_mcut)
        text = caption_from_result(result, include_characters=self.include_characters, escape=self.escape_brackets,
                                   underscores_to_spaces=self.underscores_to_spaces, exclude=list(self.exclude),
                                   sort=self.sort)
        return text, result


def tag_images(tagger: Tagger, images: list[Image.Image], options: TagOptions, batch_size: int = 8
               ) -> list[tuple[str, TagResult]]:
    """Caption and selection for each image, in order."""
    probs = predict(tagger, images, batch_size)
    return [options.caption(row, tagger.table) for row in probs]


MERGE_MODES = ("replace", "append", "prepend", "only_missing")
_TRAILING_SEPARATORS = re.compile(r"(?<!\\)[,\s]+$")  # commas / spaces ending a caption (an escaped '\,' stays)
_LEADING_SEPARATORS = re.compile(r"^[,\s]+")


def merge_caption(old: str, new: str, mode: str) -> str:
    """Combines an existing caption with the tagger's: replace, append / prepend, or only_missing.

    append / prepend keep the existing caption exactly as it was (its order, case, spacing and any repeats); only
    the tagger's tags that are already in it (compared case-insensitively) or repeated among themselves are dropped.
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"Unknown caption mode '{mode}'; expected one of {', '.join(MERGE_MODES)}.")
    if mode == "replace" or not old.strip():
        return new
    if mode == "only_missing":
        return old
    existing = {t.lower() for t in split_tags(old)}
    added = join_tags(dedupe_tags([t for t in split_tags(new) if t.lower() not in existing]))
    if not added:
        return old
    if mode == "append":
        return f"{_TRAILING_SEPARATORS.sub('', old)}, {added}"  # no blank tag where the two meet
    return f"{added}, {_LEADING_SEPARATORS.sub('', old)}"


def tag_dataset(dataset, tagger: Tagger, options: TagOptions, mode: str = "replace", batch_size: int = 8,
                on_progress=None):
    """A new dataset whose captions come from the tagger (per distinct source), plus {source: probabilities}.

    An image that cannot be decoded is dropped from the dataset and listed in its skipped files (and in the details
    under "skipped"), like every other pass over a dataset; only a dataset with no decodable image at all fails.
    """
    if mode not in MERGE_MODES:  # refused before any image is decoded
        raise ValueError(f"Unknown caption mode '{mode}'; expected one of {', '.join(MERGE_MODES)}.")
    sources = list(dict.fromkeys(it.source for s in dataset.subsets for it in s.items))
    captions, details, bad = {}, {}, {}
    for start in range(0, len(sources), batch_size):
        chunk, images = [], []
        for src in sources[start:start + batch_size]:
            try:  # raw pixels: WD14 puts transparency on white itself
                images.append(Image.fromarray(dataset.memory[src]) if src.startswith("memory:") else open_image(src))
                chunk.append(src)
            except ImageRejected as e:
                bad[src] = e.reason
        for src, (text, result) in zip(chunk, tag_images(tagger, images, options, batch_size) if images else []):
            captions[src] = text
            details[src] = result.probabilities()
        done = min(start + batch_size, len(sources))
        if on_progress:
            on_progress(done)

    def edit(subset):
        return replace(subset, items=tuple(replace(it, caption=merge_caption(it.caption, captions[it.source], mode))
                                           for it in subset.items if it.source in captions))

    out = map_subsets(dataset, None, edit)
    for reason in sorted(set(bad.values())):
        out = drop_sources(out, {k for k, v in bad.items() if v == reason}, reason)
    if bad and not out.subsets:
        raise ValueError("No image of the dataset could be decoded for tagging: "
                         + "; ".join(f"{os.path.basename(k)}: {v}" for k, v in list(bad.items())[:5]))
    if bad:
        details["skipped"] = {os.path.basename(k): v for k, v in bad.items()}
    return out, details
