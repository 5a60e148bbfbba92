"""A dataset is a description — files, captions, repeats, roles and preparation per subset — not pixels.

Nothing here knows ComfyUI. Scanning reads folder listings, caption files and image headers only; pixels are
decoded later by `core.prepare`, one sample at a time, so a folder of 30,000 images never sits in memory.
Datasets are immutable: every transform returns a new Dataset and leaves its input untouched.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .caption_text import (MAX_CAPTION_BYTES, MAX_CAPTION_CHARS, CaptionRefused, caption_size_problem,
                           check_caption_encoding, check_caption_extension, check_caption_size, clean_caption,
                           cleaning_note)
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, PREP_MODES, ImageRejected, aspect_problem, image_info
from .paths import FileTooLarge, PathRefused, Root, is_inside, natural_key, read_bytes_inside, shown

CAPTION_SOURCES = ("sidecar", "filename", "folder", "fixed")
MISSING_CAPTION_POLICIES = ("error", "skip", "empty")
ROLES = ("train", "regularization")
BEFORE_ROLE = "before"  # internal: the "before" half of image pairs (core/pairs.py); no widget offers it
FLIP_MODES = ("none", "random", "copies")
KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")


class DatasetError(ValueError):
    """Bad dataset input that stops loading: names the file or folder and what to do."""


class CaptionError(DatasetError):
    """A caption file that cannot be read as text."""


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class Preparation:
    """How a subset's images become training pixels (see core.images.prepare_image)."""

    mode: str = "crop"  # one of PREP_MODES
    width: int = 512
    height: int = 512
    pad_color: tuple[int, int, int] = (0, 0, 0)  # letterbox bars
    background: tuple[int, int, int] = (255, 255, 255)  # what transparency is composited onto
    filter: str = "lanczos"
    bucket_step: int = 64
    no_upscale: bool = False

    def __post_init__(self):
        if self.mode not in PREP_MODES:
            raise DatasetError(f"Unknown preparation mode '{self.mode}'; expected one of {', '.join(PREP_MODES)}.")
        if self.width < 8 or self.height < 8:
            raise DatasetError(f"Target size {self.width}×{self.height} is too small; use at least 8×8.")

    def key(self) -> str:
        """Stable text identifying this preparation, for cache keys and manifests."""
        return (f"{self.mode}:{self.width}x{self.height}:pad{self.pad_color}:bg{self.background}:{self.filter}:"
                f"step{self.bucket_step}:noup{int(self.no_upscale)}")


@dataclass(frozen=True)
class Item:
    """One source image with its caption; `source` is a real file path or 'memory:<key>' for graph images."""

    source: str
    caption: str
    repeats: int
    width: int
    height: int
    frames: tuple[str, ...] = ()  # a clip's checked real frame paths (its first clip_frames frames), else empty


@dataclass(frozen=True)
class Subset:
    name: str
    role: str  # "train" or "regularization"
    items: tuple[Item, ...]
    preparation: Preparation = Preparation()
    flip: str = "none"  # "random": flip per training step; "copies": add a mirrored copy of every image
    prior_loss_weight: float = 1.0  # loss weight of a regularization subset (DreamBooth prior preservation)
    folders: tuple[str, ...] = ()
    clip_frames: int = 0  # > 0: every item is a clip folder trained on its first clip_frames frames (core/clips.py)

    @property
    def samples_per_epoch(self) -> int:
        return sum(it.repeats for it in self.items) * (2 if self.flip == "copies" else 1)


@dataclass(frozen=True)
class Sample:
    """One entry of the expanded dataset: an item as seen by training (subset preparation, mirrored or not)."""

    item: Item
    subset: str
    role: str
    preparation: Preparation
    mirrored: bool  # an explicit mirrored copy
    random_flip: bool  # flip at random per training step
    prior_loss_weight: float
    clip_frames: int = 0  # > 0: the item is a clip folder (core/clips.py)


@dataclass(frozen=True)
class Dataset:
    subsets: tuple[Subset, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    notes: tuple[str, ...] = ()
    memory: dict = field(default_factory=dict, compare=False)  # 'memory:<key>' -> HWC uint8 array (graph images)
    pairs: tuple[tuple[str, str], ...] = ()  # image pairs: ("after" source, "before" source); see core/pairs.py

    def samples(self) -> list[Sample]:
        """Every item once (and its mirrored copy where the subset asks for copies); repeats are not expanded."""
        out = []
        for s in self.subsets:
            for it in s.items:
                base = dict(item=it, subset=s.name, role=s.role, preparation=s.preparation,
                            random_flip=s.flip == "random", prior_loss_weight=s.prior_loss_weight,
                            clip_frames=s.clip_frames)
                out.append(Sample(mirrored=False, **base))
                if s.flip == "copies":
                    out.append(Sample(mirrored=True, **base))
        return out

    def __len__(self) -> int:
        return sum(len(s.items) for s in self.subsets)

    def subset(self, name: str) -> Subset:
        for s in self.subsets:
            if s.name == name:
                return s
        raise DatasetError(f"No subset named '{name}'; this dataset has: {', '.join(s.name for s in self.subsets)}.")


def combine(*datasets: Dataset) -> Dataset:
    """One dataset holding every subset of the inputs; subset names made unique; duplicate file names noted."""
    subsets, skipped, notes, memory, names = [], [], [], {}, set()
    for ds in datasets:
        if ds is None:
            continue
        for s in ds.subsets:
            name, n = s.name, 2
            while name in names:
                name, n = f"{s.name}_{n}", n + 1
            names.add(name)
            subsets.append(replace(s, name=name))
        skipped += ds.skipped
        notes += ds.notes
        memory.update(ds.memory)
    notes += duplicate_name_notes(subsets)
    pairs = tuple(p for ds in datasets if ds is not None for p in ds.pairs)  # pairs survive a combine
    return Dataset(tuple(subsets), tuple(skipped), tuple(dict.fromkeys(notes)), memory, pairs)


def duplicate_name_notes(subsets) -> list[str]:
    """Notes for file names that appear in more than one subset (kept, since each is identified by its full path)."""
    seen: dict[str, set[str]] = {}
    for s in subsets:
        for it in s.items:
            if not it.source.startswith("memory:"):
                seen.setdefault(os.path.basename(it.source).lower(), set()).add(s.name)
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    return [f"file name '{k}' appears in subsets {', '.join(sorted(v))} (both kept; saved copies are prefixed by "
            "subset)" for k, v in sorted(dups.items())]


def map_subsets(dataset: Dataset, names: list[str] | None, fn) -> Dataset:
    """A new dataset with `fn(subset)` applied to the named subsets (all when `names` is empty)."""
    known = {s.name for s in dataset.subsets}
    unknown = [n for n in (names or []) if n not in known]
    if unknown:
        raise DatasetError(f"Unknown subset(s) {', '.join(unknown)}; this dataset has: {', '.join(sorted(known))}.")
    subsets = tuple(fn(s) if not names or s.name in names else s for s in dataset.subsets)
    return replace(dataset, subsets=subsets)


def as_regularization(dataset: Dataset, prior_loss_weight: float, repeats: int) -> Dataset:
    """Every subset of `dataset` as a regularisation subset (DreamBooth prior preservation) with this loss weight
    and these repeats per image; an empty set is an error, since training would silently run without it."""
    if not any(s.items for s in dataset.subsets):
        raise DatasetError("The regularization set is empty (no images in any subset); connect a dataset with "
                           "images (e.g. the copier's training set) or disconnect regularization.")
    return replace(dataset, subsets=tuple(
        replace(s, role="regularization", prior_loss_weight=float(prior_loss_weight),
                items=tuple(replace(it, repeats=int(repeats)) for it in s.items)) for s in dataset.subsets))


def parse_subset_list(text: str) -> list[str]:
    """'a, b' -> ['a', 'b']; empty text -> [] (meaning all subsets)."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


# ---------------------------------------------------------------- captions


def read_caption(path: str | Path, encoding: str = "utf-8", roots: list[Root] | None = None) -> str:
    """Reads a caption sidecar: BOMs honoured (UTF-8, UTF-16), CRLF normalised, lines joined with spaces. The file
    must lie inside one of `roots` (default: the folder it is in) when it is opened, symlinks included."""
    path = Path(path)
    data = read_bytes_inside(path, roots or [Root("folder", path.parent)], "caption file", limit=MAX_CAPTION_BYTES)
    if data.startswith(b"\xff\xfe") or data.startswith(b"\xfe\xff"):
        text = data.decode("utf-16")  # a BOM says UTF-16 whatever the configured encoding
    else:
        if data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]
        if b"\x00" in data:
            raise CaptionError(f"Caption file '{path.name}' contains NUL bytes (at byte {data.index(0)}); it is "
                               "probably UTF-16 without a byte-order mark. Re-save it as UTF-8.")
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as e:
            raise CaptionError(f"Caption file '{path.name}' is not {encoding} (byte 0x{data[e.start]:02x} at "
                               f"{e.start}); re-save it as UTF-8 or set caption_encoding (e.g. cp1252).") from None
        except LookupError:
            raise DatasetError(f"Unknown caption_encoding '{encoding}'; use a Python codec name such as utf-8 or "
                               "cp1252.") from None
    lines = [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return " ".join(line for line in lines if line)


def caption_from_filename(stem: str) -> str:
    """JoePenna-style caption: the file name without its counter suffix ('(2)', '_01', '-3'), underscores as spaces."""
    text = re.sub(r"\s*\(\d+\)$", "", stem)
    text = re.sub(r"[\s_\-]+\d+$", "", text) or text
    return re.sub(r"\s+", " ", text.replace("_", " ")).strip()


def caption_from_folder(folder_name: str) -> str:
    """kohya class caption: the folder name without its 'N_' repeats prefix ('10_sks dog' -> 'sks dog')."""
    m = KOHYA_FOLDER.match(folder_name)
    return (m.group(2) if m else folder_name).strip()


def repeats_from_folder(folder_name: str) -> int | None:
    """kohya repeats prefix: '10_name' -> 10; None when the name has no prefix."""
    m = KOHYA_FOLDER.match(folder_name)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------- scanning


def _walk_images(folder: Path, root: Path, recursive: bool, skipped: list[Skipped]) -> list[Path]:
    """Image files under `folder`, following symlinks only while they stay inside `root`, each real folder once."""
    found, visited, stack = [], set(), [folder]
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in visited:
            skipped.append(Skipped(str(current), "symlink loop: folder already visited"))
            continue
        visited.add(real)
        try:
            entries = sorted(os.scandir(current), key=lambda e: natural_key(e.name))
        except OSError as e:
            skipped.append(Skipped(str(current), f"cannot list folder ({e.strerror})"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_symlink() and not is_inside(entry.path, root):
                skipped.append(Skipped(entry.path, "symlink leads outside the allowed root; not read"))
                continue
            if entry.is_dir():
                if recursive:
                    stack.append(Path(entry.path))
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(entry.path))
    return sorted(found, key=lambda p: natural_key(str(p)))


def scan_folder(folder: str | Path, root: str | Path | Root | None = None, *, name: str | None = None,
                role: str = "train",
                repeats: int = 0, recursive: bool = True, caption_source: str = "sidecar",
                caption_extension: str = ".txt", fixed_caption: str = "", caption_encoding: str = "utf-8",
                on_missing_caption: str = "error", prior_loss_weight: float = 1.0,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Scans one folder into a one-subset dataset; unusable images are skipped and listed, not fatal.

    Repeats: `repeats` > 0 wins; otherwise the nearest 'N_name' folder between the image and `folder` (kohya), else 1.
    Every image and caption file must lie inside `root` when it is opened (symlinks included); one that leads
    outside is skipped and reported, never read. Reports and the subset's `folders` name places by their root label.
    """
    folder = Path(folder)
    if not isinstance(root, Root):
        root = Root(folder.name, folder) if root is None else Root("dataset", Path(root))
    roots = [root]
    for value, allowed, what in ((role, ROLES, "role"), (caption_source, CAPTION_SOURCES, "caption_source"),
                                 (on_missing_caption, MISSING_CAPTION_POLICIES, "on_missing_caption")):
        if value not in allowed:
            raise DatasetError(f"Unknown {what} '{value}'; expected one of {', '.join(allowed)}.")
    caption_extension = check_caption_extension(caption_extension)  # refused before any file is read
    check_caption_encoding(caption_encoding)
    if caption_source == "fixed":
        fixed_caption = clean_caption(check_caption_size(fixed_caption, "fixed_caption"))[0]
    if not folder.is_dir():
        raise DatasetError(f"Dataset folder '{shown(folder, roots)}' does not exist or is not a folder.")

    skipped: list[Skipped] = []
    notes: list[str] = []
    items, cleaned, animated, strips = [], {}, [], []
    for path in _walk_images(folder, root.path, recursive, skipped):
        try:
            w, h, frames, fmt = image_info(path, max_pixels, roots)
        except ImageRejected as e:
            skipped.append(Skipped(str(path), e.reason))
            continue
        rel = os.path.relpath(path, folder)
        try:
            caption = _caption_for(path, caption_source, caption_extension, fixed_caption, caption_encoding,
                                   roots)
        except (CaptionRefused, PathRefused, FileTooLarge) as e:  # outside the root, or not a caption: not read
            skipped.append(Skipped(str(path), str(e)))
            continue
        if caption is not None:
            problem = caption_size_problem(caption)
            if problem:
                skipped.append(Skipped(str(path), f"{path.with_suffix(caption_extension).name}: {problem}"))
                continue
            caption, removed = clean_caption(caption)
            if removed:
                cleaned[path.with_suffix(caption_extension).name if caption_source == "sidecar" else rel] = removed
        if frames > 1:
            animated.append(f"{rel} ({fmt}, frame 1 of {frames} used)")
        if aspect_problem(w, h):
            strips.append(f"{rel}: {aspect_problem(w, h)}")
        if caption is None:
            sidecar = path.with_suffix(caption_extension).name
            if on_missing_caption == "error":
                raise DatasetError(f"Image '{path.name}' in '{shown(path.parent, roots)}' has no caption file "
                                   f"'{sidecar}'. Add one, or set on_missing_caption to 'skip' or 'empty', or choose "
                                   "another caption_source.")
            if on_missing_caption == "skip":
                skipped.append(Skipped(str(path), f"no caption file {sidecar}"))
                continue
            caption = ""
        elif caption == "" and caption_source == "sidecar":
            notes.append(f"empty caption file: {path.with_suffix(caption_extension).name}")
        items.append(Item(os.path.realpath(path), caption, repeats if repeats > 0 else _folder_repeats(path, folder),
                          w, h))
    if not items:
        detail = f" ({len(skipped)} skipped: {skipped[0].reason}{' …' if len(skipped) > 1 else ''})" if skipped else ""
        raise DatasetError(f"No usable images in '{shown(folder, roots)}'{detail}. Supported: "
                           f"{', '.join(IMAGE_EXTENSIONS)} files with PNG/JPEG/WEBP/BMP/GIF content.")
    if animated:
        notes.append(f"animated: {len(animated)} image(s) use their first frame: {', '.join(animated[:10])}"
                     + (f" and {len(animated) - 10} more" if len(animated) > 10 else ""))
    notes += [f"warning: {w}" for w in strips]
    notes += [n for n in [cleaning_note(cleaned)] if n]
    subset = Subset(name or caption_from_folder(folder.name) or "subset", role, tuple(items),
                    prior_loss_weight=prior_loss_weight, folders=(shown(folder, roots),))
    return Dataset((subset,), tuple(skipped), tuple(notes))


def folder_fingerprint(folder: str | Path, recursive: bool = True) -> str:
    """Hash of every non-hidden file's relative path, size and mtime under `folder`: changes when an image or a
    caption is added, removed or edited (one stat per file, no reads), so a host can tell a reload is needed."""
    h = hashlib.sha1()
    folder = Path(folder)
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue  # vanished or a dangling link: the scan will report it
            h.update(f"{os.path.relpath(os.path.join(dirpath, name), folder)}\0{st.st_size}\0{st.st_mtime_ns}\n"
                     .encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _folder_repeats(path: Path, top: Path) -> int:
    for parent in [path.parent, *path.parent.parents]:
        r = repeats_from_folder(parent.name)
        if r is not None:
            return max(r, 1)
        if parent == top:
            break
    return 1


def _caption_for(path: Path, source: str, ext: str, fixed: str, encoding: str, roots: list[Root]) -> str | None:
    if source == "fixed":
        return fixed.strip()
    if source == "filename":
        return caption_from_filename(path.stem)
    if source == "folder":
        return caption_from_folder(path.parent.name)
    sidecar = path.with_suffix(ext)
    if not os.path.lexists(sidecar):
        return None
    if not sidecar.exists():
        raise PathRefused(f"Caption file '{shown(sidecar, roots)}' is a broken symlink; it was not read.")
    size = sidecar.stat().st_size
    if size > MAX_CAPTION_BYTES:  # refused from its size: a huge file is never read into memory
        raise CaptionRefused(f"caption file {sidecar.name} is {size:,} bytes, more than "
                             f"{MAX_CAPTION_CHARS:,} characters can take; shorten it (CLIP reads ~75 tokens)")
    return read_caption(sidecar, encoding, roots)  # a link is read only while it stays inside the root


# ---------------------------------------------------------------- transforms


def with_preparation(dataset: Dataset, preparation: Preparation, subsets: list[str] | None = None) -> Dataset:
    return map_subsets(dataset, subsets, lambda s: replace(s, preparation=preparation))


def with_flip(dataset: Dataset, mode: str, subsets: list[str] | None = None,
              exclude: list[str] | None = None) -> Dataset:
    """Mirror augmentation for the named subsets (all by default) except `exclude` (text, asymmetric characters)."""
    if mode not in FLIP_MODES:
        raise DatasetError(f"Unknown flip mode '{mode}'; expected one of {', '.join(FLIP_MODES)}.")
    excluded = set(exclude or [])
    return map_subsets(dataset, subsets, lambda s: s if s.name in excluded else replace(s, flip=mode))


def add_downscaled_copy(dataset: Dataset, size: int, repeats: int, subsets: list[str] | None = None,
                        suffix: str | None = None) -> Dataset:
    """Adds, for each named subset, a copy prepared at `size`² (same files and captions) with its own repeats."""
    if size < 64:
        raise DatasetError(f"Downscaled copy size {size} is too small; use at least 64.")
    if repeats < 1:
        raise DatasetError(f"Downscaled copy repeats must be at least 1, got {repeats}.")
    chosen = [s for s in dataset.subsets if not subsets or s.name in subsets]
    map_subsets(dataset, subsets, lambda s: s)  # validates the names
    copies = []
    for s in chosen:
        prep = replace(s.preparation, width=size, height=size)
        items = tuple(replace(it, repeats=repeats) for it in s.items)
        copies.append(replace(s, name=f"{s.name}{suffix or f'_{size}px'}", items=items, preparation=prep))
    return combine(dataset, Dataset(tuple(copies)))


def drop_sources(dataset: Dataset, sources: set[str], reason: str) -> Dataset:
    """A dataset without the items whose source is in `sources`; they are listed as skipped with `reason`."""
    subsets = tuple(replace(s, items=tuple(it for it in s.items if it.source not in sources)) for s in dataset.subsets)
    skipped = dataset.skipped + tuple(Skipped(src, reason) for src in sorted(sources))
    return replace(dataset, subsets=tuple(s for s in subsets if s.items), skipped=skipped)


def from_arrays(images: list[np.ndarray], captions: list[str], *, name: str = "graph", role: str = "train",
                repeats: int = 1, key_prefix: str = "graph") -> Dataset:
    """A dataset of in-memory images (HWC uint8 RGB arrays), e.g. images generated earlier in the graph."""
    if len(images) == 0:
        raise DatasetError("The IMAGE batch is empty; connect a batch with at least one image.")
    if role not in ROLES:
        raise DatasetError(f"Unknown role '{str(role)[:40]}'; expected one of {', '.join(ROLES)}.")
    if captions and len(captions) not in (1, len(images)):
        raise DatasetError(f"Got {len(captions)} captions for {len(images)} images; give one caption per image, or "
                           "one caption for all.")
    captions = list(captions) * len(images) if len(captions) == 1 else list(captions) or [""] * len(images)
    captions, notes = graph_captions(captions)
    memory, items = {}, []
    for i, (arr, cap) in enumerate(zip(images, captions)):
        key = f"memory:{key_prefix}/{i:05d}"
        memory[key] = arr
        items.append(Item(key, cap.strip(), max(repeats, 1), int(arr.shape[1]), int(arr.shape[0])))
    # Graph images already have the size the graph made them; keep it unless a Prepare node says otherwise.
    keep = Preparation(mode="none", width=max(8, items[0].width), height=max(8, items[0].height))
    return Dataset((Subset(name, role, tuple(items), preparation=keep),), notes=notes, memory=memory)


def graph_captions(captions: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """Captions that arrive from the graph, size-checked (refused, naming the position) and cleaned of control
    characters (noted)."""
    out, cleaned = [], {}
    for i, text in enumerate(captions):
        check_caption_size(str(text), f"caption {i + 1} of {len(captions)}")
        text, removed = clean_caption(str(text).strip())
        if removed:
            cleaned[f"caption {i + 1}"] = removed
        out.append(text)
    return out, tuple(n for n in [cleaning_note(cleaned)] if n)


def describe(dataset: Dataset, max_skipped: int = 30) -> str:
    """Human-readable load report: subsets, counts, repeats, skipped files with reasons, notes."""
    lines = []
    for s in dataset.subsets:
        reps = sorted({it.repeats for it in s.items})
        rep_text = str(reps[0]) if len(reps) == 1 else f"{reps[0]}–{reps[-1]}"
        what = f"clips of {s.clip_frames} frames" if s.clip_frames else "images"
        lines.append(f"subset '{s.name}' ({s.role}): {len(s.items)} {what} × {rep_text} repeats"
                     f"{', mirrored copies' if s.flip == 'copies' else ', random flip' if s.flip == 'random' else ''}"
                     f" → {s.samples_per_epoch} samples/epoch; prep {s.preparation.mode} "
                     f"{s.preparation.width}×{s.preparation.height}"
                     + (f"; prior loss weight {s.prior_loss_weight}" if s.role == "regularization" else ""))
    if dataset.skipped:
        lines.append(f"skipped {len(dataset.skipped)} file(s):")
        lines += [f"  {sk.path}: {sk.reason}" for sk in dataset.skipped[:max_skipped]]
        if len(dataset.skipped) > max_skipped:
            lines.append(f"  … and {len(dataset.skipped) - max_skipped} more")
    lines += [f"note: {n}" for n in dataset.notes]
    return "\n".join(lines)


def attach_captions(dataset: Dataset, captions: list[str]) -> Dataset:
    """Captions from any other captioner, in dataset order: one per distinct image file (shared by its copies),
    or one per item across subsets."""
    sources = list(dict.fromkeys(it.source for s in dataset.subsets for it in s.items))
    items = [it for s in dataset.subsets for it in s.items]
    texts, notes = graph_captions(captions)
    if len(texts) == len(sources):
        by_source = dict(zip(sources, texts))
        pick = iter([by_source[it.source] for it in items])
    elif len(texts) == len(items):
        pick = iter(texts)
    else:
        raise DatasetError(f"Got {len(texts)} captions; this dataset has {len(sources)} distinct images and "
                           f"{len(items)} items across subsets. Give one caption per image, in dataset order.")
    subsets = tuple(replace(s, items=tuple(replace(it, caption=next(pick)) for it in s.items)) for s in dataset.subsets)
    return replace(dataset, subsets=subsets, notes=tuple(dict.fromkeys(dataset.notes + notes)))
