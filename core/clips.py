"""Short clips for video models (Wan 2.x): a clip is a folder of frames or an animated image file, one training
sample per clip.

Nothing here knows ComfyUI. Layout, one subfolder or animated GIF / WebP / PNG (APNG) per clip, its caption beside it:

    clips/
      walk_cycle/  0001.png 0002.png … (frames in natural name order: 2 before 10)
      walk_cycle.txt
      turn.gif     (an animation: its frames in playing order, composited as a viewer shows them)
      turn.txt

Every clip trains on its first `frames` frames, where frames = 1 + 4k (1, 5, 9, 13, 17, …): the Wan VAE encodes the
first frame alone and every later 4 frames into one latent frame, so a clip of 1 + 4k frames gives 1 + k latent
frames (comfy/ldm/wan/vae.py WanVAE.encode). All frames of a clip must have one size.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from .caption_text import caption_size_problem, check_caption_encoding, check_caption_extension, clean_caption
from .dataset import MISSING_CAPTION_POLICIES, ROLES, Dataset, DatasetError, Item, Skipped, Subset, read_caption
from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageRejected, animation_frames, flip_horizontal, image_info
from .images import open_image
from .images import make_buckets, prepare_image, to_rgb
from .paths import Root, is_inside, natural_key, open_resolved, shown

MAX_CLIP_FRAMES = 257  # 1 + 4·64: far beyond what a LoRA run on a short clip needs
CLIP_CAPTION_SOURCES = ("sidecar", "filename", "fixed")
ANIMATION_EXTENSIONS = (".gif", ".webp", ".png")  # files read as clips when animated (content decides the format)
MAX_CLIP_PIXELS = 400_000_000  # frames × width × height an animated clip may decode (1280×720 × 257 fits)


def frame_count_problem(frames: int) -> str | None:
    """Why `frames` is not a frame count the Wan VAE encodes whole (1 + 4k), or None."""
    if not isinstance(frames, int) or frames < 1 or frames > MAX_CLIP_FRAMES or (frames - 1) % 4:
        below = max(1, 1 + 4 * ((int(frames) - 1) // 4)) if isinstance(frames, int) and frames >= 1 else 1
        return (f"clip_frames is {frames}; the Wan VAE encodes 1 + 4k frames (1, 5, 9, 13, 17, … up to "
                f"{MAX_CLIP_FRAMES}). Use {min(below, MAX_CLIP_FRAMES)} or {min(below + 4, MAX_CLIP_FRAMES)}.")
    return None


def latent_frames(frames: int) -> int:
    """Latent frames of a 1 + 4k frame clip: the first frame alone, then one per 4 frames."""
    return 1 + (frames - 1) // 4


def frame_files(folder: str | Path) -> list[Path]:
    """The image files directly in a clip folder (hidden files ignored), in natural name order."""
    names = [e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file()
             and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    return [Path(folder) / n for n in sorted(names, key=natural_key)]


def clip_digest(frames: tuple[str, ...], h=None):
    """A running sha256 of a clip's checked frames (real paths recorded by the scan): each frame's name and bytes,
    in frame order (any edit changes it); frames past clip_frames are never read."""
    h = h or hashlib.sha256()
    for real in frames:
        h.update(os.path.basename(real).encode("utf-8", "surrogateescape") + b"\0")
        with os.fdopen(open_resolved(real, "image"), "rb") as f:  # that exact file: no link followed, none swapped in
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h


def check_clip(folder: Path, frames: int, roots: list[Root], max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> tuple[tuple[int, int], tuple[str, ...]]:
    """((width, height), real frame paths) of a clip whose first `frames` frames exist, lie inside the roots and
    share one size; training opens only those real paths."""
    files = frame_files(folder)
    name = shown(folder, roots)
    if len(files) < frames:
        raise DatasetError(f"Clip '{name}' has {len(files)} frame(s); this subset takes clip_frames = {frames}. Add "
                           f"frames to the clip, remove it, or lower clip_frames (1 + 4k: 1, 5, 9, …).")
    size, reals = None, []
    for path in files[:frames]:
        if not is_inside(path, roots[0].path):
            raise DatasetError(f"Clip '{name}': frame '{path.name}' is a link leading outside the dataset folder; "
                               "copy the frame into the clip folder.")
        try:
            w, h, _, _ = image_info(path, max_pixels, roots)
        except ImageRejected as e:
            raise DatasetError(f"Clip '{name}': frame '{path.name}' cannot be used ({e.reason}).") from None
        if size is None:
            size, first = (w, h), path.name
        elif (w, h) != size:
            raise DatasetError(f"Clip '{name}': frame '{path.name}' is {w}×{h} but frame '{first}' is "
                               f"{size[0]}×{size[1]}; every frame of a clip must have one size. Re-export the clip "
                               "at one size.")
        reals.append(os.path.realpath(path))
    return size, tuple(reals)


def check_animation(path: Path, frames: int, roots: list[Root], max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_clip_pixels: int = MAX_CLIP_PIXELS) -> tuple[tuple[int, int], tuple[str, ...]]:
    """((width, height), (its real path,)) of an animated GIF / WebP / APNG clip with at least `frames` frames, from
    its header alone; ImageRejected for a file that is not an animation we read (the scan skips and reports it)."""
    name = shown(path, roots)
    width, height, available, fmt = image_info(path, max_pixels, roots)  # inside the roots, allowed format, size cap
    if available < 2:
        raise ImageRejected(path, f"a still {fmt} image (1 frame), not an animation; a clip is a folder of frames or "
                                  "an animated GIF, WebP or PNG")
    if available < frames:
        raise DatasetError(f"Clip '{name}' has {available} frame(s); this subset takes clip_frames = {frames}. Use a "
                           f"longer animation, remove it, or lower clip_frames (1 + 4k: 1, 5, 9, …).")
    if frames * width * height > max_clip_pixels:
        raise DatasetError(f"Clip '{name}' would decode {frames} frames of {width}×{height} = "
                           f"{frames * width * height:,} pixels, over the limit of {max_clip_pixels:,} per clip "
                           "(decompression-bomb guard). Downscale the animation or lower clip_frames.")
    return (width, height), (os.path.realpath(path),)


def is_animation_clip(item) -> bool:
    """True for a clip read from one animated file (its only recorded frame path is the file itself)."""
    return bool(item.frames) and item.frames == (item.source,)


def scan_clips(folder: str | Path, root: str | Path | Root | None = None, *, frames: int, name: str | None = None,
               role: str = "train", repeats: int = 1, caption_source: str = "sidecar",
               caption_extension: str = ".txt", fixed_caption: str = "", caption_encoding: str = "utf-8",
               on_missing_caption: str = "error", max_pixels: int = DEFAULT_MAX_PIXELS,
               max_clip_pixels: int = MAX_CLIP_PIXELS) -> Dataset:
    """One subset of clips: every subfolder of `folder` holding frames, and every animated GIF / WebP / PNG in it, is
    a clip, captioned by '<clip>.txt' beside it (caption_source 'sidecar'), its name ('filename') or one fixed text
    ('fixed'); still images and unreadable files there are skipped and reported."""
    folder = Path(folder)
    root = root if isinstance(root, Root) else Root(folder.name, folder) if root is None else Root("dataset", root)
    roots = [root]
    problem = frame_count_problem(frames)
    if problem:
        raise DatasetError(problem)
    if role not in ROLES or on_missing_caption not in MISSING_CAPTION_POLICIES:
        raise DatasetError(f"Unknown role '{role}' or on_missing_caption '{on_missing_caption}'; expected one of "
                           f"{', '.join(ROLES)} and one of {', '.join(MISSING_CAPTION_POLICIES)}.")
    if caption_source not in CLIP_CAPTION_SOURCES:
        raise DatasetError(f"Unknown caption_source '{caption_source}' for clips; expected one of "
                           f"{', '.join(CLIP_CAPTION_SOURCES)}.")
    caption_extension = check_caption_extension(caption_extension)
    check_caption_encoding(caption_encoding)
    if not folder.is_dir():
        raise DatasetError(f"Clip folder '{shown(folder, roots)}' does not exist or is not a folder.")
    items, skipped = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: natural_key(e.name)):
        clip = Path(entry.path)
        animated = entry.is_file() and clip.suffix.lower() in ANIMATION_EXTENSIONS  # other files: captions, notes
        if entry.name.startswith(".") or not (animated or entry.is_dir()):
            continue
        if entry.is_symlink() and not is_inside(clip, root.path):
            skipped.append(Skipped(entry.path, "symlink leads outside the allowed root; not read"))
            continue
        if animated:
            try:
                (width, height), reals = check_animation(clip, frames, roots, max_pixels, max_clip_pixels)
            except ImageRejected as e:
                skipped.append(Skipped(entry.path, e.reason))
                continue
        elif not frame_files(clip):
            skipped.append(Skipped(entry.path, "no frames (image files) in this folder"))
            continue
        else:
            (width, height), reals = check_clip(clip, frames, roots, max_pixels)
        stem = clip.stem if animated else clip.name  # 'walk.gif' and 'walk/' are both captioned by 'walk.txt'
        caption = _clip_caption(clip.parent, stem, caption_source, caption_extension, fixed_caption, caption_encoding,
                                roots)
        if caption is None:
            if on_missing_caption == "error":
                raise DatasetError(f"Clip '{shown(clip, roots)}' has no caption file '{stem}{caption_extension}' "
                                   f"beside {'it' if animated else 'its folder'}. Add one, or set "
                                   "on_missing_caption to 'skip' or 'empty'.")
            if on_missing_caption == "skip":
                skipped.append(Skipped(entry.path, f"no caption file {stem}{caption_extension}"))
                continue
            caption = ""
        items.append(Item(os.path.realpath(clip), caption, max(int(repeats), 1), width, height, frames=reals))
    if not items:
        raise DatasetError(f"No clips in '{shown(folder, roots)}': put each clip's frames in its own subfolder "
                           f"(e.g. walk/0001.png …), or add each clip as an animated GIF, WebP or PNG (walk.gif), "
                           f"with walk{caption_extension} beside it.")
    subset = Subset(name or folder.name, role, tuple(items), folders=(shown(folder, roots),), clip_frames=frames)
    return Dataset((subset,), tuple(skipped))


def _clip_caption(parent: Path, stem: str, source: str, ext: str, fixed: str, encoding: str, roots) -> str | None:
    if source == "fixed":
        return clean_caption(fixed.strip())[0]
    if source == "filename":
        return stem.replace("_", " ").strip()
    sidecar = parent / (stem + ext)  # beside the folder: 'walk.v2' + '.txt', not 'walk.txt'
    if not sidecar.is_file():
        return None
    text = read_caption(sidecar, encoding, roots)
    problem = caption_size_problem(text)
    if problem:
        raise DatasetError(f"Caption '{sidecar.name}' of clip '{stem}': {problem}.")
    return clean_caption(text)[0]


def prepare_clip(sample) -> list[Image.Image]:
    """A clip sample's first `clip_frames` frames as training pixels: each decoded, composited, prepared with the
    subset's preparation (one geometry for all, since the frames share one size) and mirrored when asked."""
    prep = sample.preparation
    files = sample.item.frames[:sample.clip_frames]  # the real frame paths the scan checked, never listed again
    name = Path(sample.item.source).name
    if is_animation_clip(sample.item):
        pictures = _animation(sample.item.source, sample.clip_frames, name)
    elif len(files) < sample.clip_frames:
        raise DatasetError(f"Clip '{name}' has {len(files)} checked frame(s), fewer than clip_frames = "
                           f"{sample.clip_frames}; load the dataset again with Load Clips.")
    else:
        pictures = (_open_frame(real, name) for real in files)  # one frame decoded at a time
    buckets = make_buckets((prep.width, prep.height), step=prep.bucket_step) if prep.mode == "buckets" else None
    out = []
    for picture in pictures:
        rgb, _ = to_rgb(picture, prep.background)
        frame = prepare_image(rgb, prep.mode, prep.width, prep.height, pad_color=prep.pad_color, filter=prep.filter,
                              buckets=buckets, no_upscale=prep.no_upscale)
        out.append(flip_horizontal(frame) if sample.mirrored else frame)
    return out


def _open_frame(real: str, clip: str) -> Image.Image:
    """A frame decoded from the real path the scan checked, refused when that path became (or now passes) a link."""
    if os.path.realpath(real) != real:
        raise DatasetError(f"Clip '{clip}': frame '{os.path.basename(real)}' was replaced by a link since the dataset "
                           "was loaded; it was not read. Copy the frame into the clip folder and load the dataset "
                           "again.")
    return open_image(real, roots=[Root("clip", os.path.dirname(real))])  # re-checked as it is opened


def _animation(real: str, frames: int, clip: str):
    """The first `frames` frames of the animated file the scan checked, decoded one at a time, refused when that path
    became (or now passes) a link."""
    if os.path.realpath(real) != real:
        raise DatasetError(f"Clip '{clip}' was replaced by a link since the dataset was loaded; it was not read. Copy "
                           "the animation into the clips folder and load the dataset again.")
    try:
        yield from animation_frames(real, frames, roots=[Root("clip", os.path.dirname(real))])  # re-checked on open
    except ImageRejected as e:
        raise DatasetError(f"Clip '{clip}' cannot be used ({e.reason}); re-export it or load the dataset again with "
                           "Load Clips.") from None
