"""Image files in, training-ready RGB pixels out: safe decoding, mode conversion, crop / letterbox / buckets; and
the one way an image file is written (write_image: atomically).

Nothing here knows ComfyUI. This module decodes one image file by its content (never its extension), refuses what it
will not use with an `ImageRejected` that names the file, turns any Pillow mode into RGB (compositing transparency
onto a background), and does the geometry of dataset preparation: centre crops, letterboxing, aspect-ratio buckets.
It does not scan folders, read captions or batch images (see core.dataset and core.prepare).

Geometry functions expect RGB images, as `to_rgb` returns them. Pillow's global settings (`Image.MAX_IMAGE_PIXELS`,
`ImageFile.LOAD_TRUNCATED_IMAGES`) are read, never changed.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import threading
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps

from .paths import PathRefused, atomic_write_bytes, resolve_in_roots, verify_fd

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")  # what a folder scan picks up (lowercase)
# Pillow format names we decode; anything else is refused. MPO is what Pillow calls many phone/camera JPEGs (a JPEG
# whose first frame is the photo); we read that first frame. Animated GIF, WebP and PNG (APNG) files give their first
# frame too, as kohya's loader does; a scan notes them (see `image_info`).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "MPO", "GIF")
ANIMATED_FORMATS = ("GIF", "WEBP", "PNG")  # where more than one frame means an animation (MPO frames are previews)
MAX_ASPECT = 8.0  # a crop of an image longer than 8:1 keeps less than an eighth of it: noted at load, skipped in crop
DEFAULT_MAX_PIXELS = 80_000_000  # decompression-bomb guard, checked from the header before decoding
FILTERS = ("lanczos", "area", "bicubic", "bilinear", "nearest")
PREP_MODES = ("crop", "letterbox", "buckets", "none")

_RESAMPLE = {
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,  # BOX averages whole source pixels: area-correct when downscaling
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

# Errors Pillow raises for unreadable headers or pixel data (struct.error and zlib.error come from damaged chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

# warnings.catch_warnings swaps the process-wide filter list and is not thread-safe (Python 3.11); core.prepare opens
# images on a thread pool, so our own openings take turns. Only the header is read under the lock, not the pixels.
_OPEN_LOCK = threading.Lock()


class ImageRejected(ValueError):
    """An image file we will not use; `path` and `reason` are kept so a scan can skip-and-report."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):
        # The default pickling would call ImageRejected(message) and fail; process pools pickle exceptions.
        return (ImageRejected, (self.path, self.reason))


# ---------------------------------------------------------------- decoding


def _pillow_error_limit() -> int | None:
    """The pixel count above which Pillow itself refuses to open a file (None when disabled)."""
    if Image.MAX_IMAGE_PIXELS is None:
        return None
    return 2 * Image.MAX_IMAGE_PIXELS  # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that


def _too_large(path, size_text: str, max_pixels: int) -> ImageRejected:
    pil_limit = _pillow_error_limit()
    limit = max_pixels if pil_limit is None else min(max_pixels, pil_limit)
    return ImageRejected(path, f"image is {size_text}, over the limit of {limit:,} pixels (decompression-bomb "
                               "guard); downscale it before adding it to the dataset")


def _opened_as(img: Image.Image, real: str, path) -> Image.Image:
    """`img` if the file Pillow opened is really `real` (no symlink swapped in after the check), else refused."""
    fp = getattr(img, "fp", None)
    try:
        fd = fp.fileno() if fp is not None else None
    except (AttributeError, OSError, ValueError):
        fd = None  # not a real file handle: nothing more to check
    if fd is not None:
        try:
            verify_fd(fd, real, "image")
        except PathRefused as e:
            img.close()
            raise ImageRejected(path, str(e)) from None
    return img


def _open_header(path, max_pixels: int, roots=None) -> Image.Image:
    """Opens `path` with Pillow, reading only the header; refuses missing, unidentifiable and huge files. With
    `roots`, the image's real path must lie inside one of them; either way the opened handle must be the file that
    the real path named when it was checked."""
    try:
        real = os.fspath(resolve_in_roots(path, roots, "image")) if roots else os.path.realpath(path)
    except PathRefused as e:
        raise ImageRejected(path, str(e)) from None
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Pillow warns for 89-179 MP images; our own limit below decides, so its warning must not escape.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _opened_as(Image.open(real), real, path)
    except Image.DecompressionBombError as e:
        # Pillow refused before telling us the size; its message carries the pixel count.
        found = re.search(r"\((\d+) pixels\)", str(e))
        size_text = f"{int(found.group(1)):,} pixels" if found else f"too large for Pillow ({e})"
        raise _too_large(path, size_text, max_pixels) from None
    except FileNotFoundError:
        raise ImageRejected(path, "file not found; check the path, or rescan the folder if it was moved") from None
    except IsADirectoryError:
        raise ImageRejected(path, "is a folder, not an image file") from None
    except PermissionError as e:
        raise ImageRejected(path, f"cannot be read ({e.strerror}); fix the file's permissions") from None
    except Image.UnidentifiedImageError:
        raise ImageRejected(path, f"content is not an image format Pillow recognises; expected one of "
                                  f"{', '.join(ALLOWED_FORMATS)}. Re-save it as PNG or JPEG, or remove it") from None
    except _DECODE_ERRORS as e:
        raise ImageRejected(path, f"truncated or corrupt image header ({type(e).__name__}: {e}); re-export the "
                                  "file or remove it") from None


def _check_header(path, img: Image.Image, max_pixels: int) -> None:
    """Refuses, from the header alone, formats outside the allow-list, empty images and oversized images."""
    if img.format not in ALLOWED_FORMATS:
        raise ImageRejected(path, f"file content is {img.format}, not one of {', '.join(ALLOWED_FORMATS)} "
                                  "(the extension does not matter); convert it to PNG or JPEG, or remove it")
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageRejected(path, f"image has no pixels ({width}×{height})")
    if width * height > max_pixels:
        raise _too_large(path, f"{width}×{height} = {width * height:,} pixels", max_pixels)


def _header_orientation(img: Image.Image) -> int:
    """EXIF Orientation from header data only. A PNG's eXIf chunk may follow the pixels, and Pillow's getexif()
    then decodes the whole image to reach it; a probe must stay cheap, so such PNGs count as upright here."""
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return img.getexif().get(0x0112, 1)  # EXIF Orientation tag


def image_info(path, max_pixels: int = DEFAULT_MAX_PIXELS, roots=None) -> tuple[int, int, int, str]:
    """Upright (width, height), frame count and format from headers alone (EXIF rotation counted), with open_image's
    header checks. Counting a GIF's frames walks its blocks without decoding pixels."""
    img = _open_header(path, max_pixels, roots)
    with img:
        _check_header(path, img, max_pixels)
        width, height = img.size
        try:
            orientation = _header_orientation(img)
        except _DECODE_ERRORS:
            orientation = 1  # unreadable EXIF: open_image reports it when the pixels are decoded
        try:
            frames = int(getattr(img, "n_frames", 1)) if img.format in ANIMATED_FORMATS else 1
        except _DECODE_ERRORS:
            frames = 1  # a damaged later frame: the first one is what we use, and decoding it checks it
    size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)  # 5-8 turn the image by 90°
    return size[0], size[1], frames, img.format


def probe_image(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Upright (width, height) from the header alone (EXIF rotation counted), with open_image's header checks."""
    return image_info(path, max_pixels)[:2]


def aspect_problem(width: int, height: int, limit: float = MAX_ASPECT) -> str | None:
    """A warning for a strip longer than `limit`:1 (a centre crop would keep a sliver of it), or None."""
    ratio = max(width, height) / max(1, min(width, height))
    if ratio <= limit:
        return None
    return (f"extreme aspect ratio {width}×{height} ({ratio:,.0f}:1): a centre crop keeps less than 1/{limit:g} of it; "
            "use letterbox mode, or crop the image into pieces")


def open_image(path, max_pixels: int = DEFAULT_MAX_PIXELS, roots=None) -> Image.Image:
    """Decodes an image file by content into memory, upright (EXIF orientation applied), or raises ImageRejected;
    with `roots`, its real path must lie inside one of them."""
    img = _open_header(path, max_pixels, roots)
    try:
        _check_header(path, img, max_pixels)
        try:
            img.load()
        except _DECODE_ERRORS as e:
            raise ImageRejected(path, f"truncated or corrupt image data ({type(e).__name__}: {e}); re-export the "
                                      "file or remove it") from None
        try:
            orientation = img.getexif().get(0x0112, 1)  # EXIF Orientation tag
            if orientation == 1 and getattr(img, "n_frames", 1) == 1:
                return img  # upright single frame: load() already released the file, no copy needed
            upright = ImageOps.exif_transpose(img)  # a new image, so closing the file below is safe
        except _DECODE_ERRORS as e:
            raise ImageRejected(path, f"unreadable EXIF orientation ({type(e).__name__}: {e}); re-save the image "
                                      "without metadata or remove it") from None
    except BaseException:
        img.close()
        raise
    img.close()  # multi-frame files (MPO) keep their file open until closed
    return upright


# EXIF Orientation -> the turn that makes a frame upright (EXIF 2.3, tag 0x0112)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def animation_frames(path, count: int, max_pixels: int = DEFAULT_MAX_PIXELS, roots=None):
    """Yields the first `count` frames of an animated GIF, WebP or PNG (APNG) as whole pictures, upright, one at a
    time: Pillow composites each frame onto the canvas (GIF disposal, APNG dispose/blend ops, WebP blending). Frames
    past `count` are never decoded; the file's header passes open_image's checks and every frame's size is its own."""
    img = _open_header(path, max_pixels, roots)
    with img:
        _check_header(path, img, max_pixels)
        try:
            available = int(getattr(img, "n_frames", 1)) if img.format in ANIMATED_FORMATS else 1
            turn = _UPRIGHT.get(_header_orientation(img))
        except _DECODE_ERRORS as e:
            raise ImageRejected(path, f"unreadable animation header ({type(e).__name__}: {e}); re-export the file "
                                      "or remove it") from None
        if available < count:
            raise ImageRejected(path, f"has {available} frame(s), fewer than the {count} asked for")
        size = img.size
        for index in range(count):
            try:
                img.seek(index)  # sequential seeks: each frame is composited onto the one before it
                if img.size != size:  # checked before decoding: a GIF frame can grow the canvas past the caps
                    raise ImageRejected(path, f"frame {index + 1} is {img.size[0]}×{img.size[1]} but frame 1 is "
                                              f"{size[0]}×{size[1]}; re-export the animation at one size")
                img.load()
            except ImageRejected:
                raise
            except (*_DECODE_ERRORS, Image.DecompressionBombError) as e:
                raise ImageRejected(path, f"frame {index + 1} is truncated, corrupt or too large "
                                          f"({type(e).__name__}: {e}); re-export the file or remove it") from None
            frame = img.copy()  # detached from the file, palette and transparency kept for to_rgb
            yield frame.transpose(turn) if turn is not None else frame


# ---------------------------------------------------------------- colour


def _composite_premultiplied(color: np.ndarray, alpha: np.ndarray, background) -> np.ndarray:
    """Composite of premultiplied colour (H, W, 3) uint8: out = color + bg*(1-a), rounded -> (H, W, 3) uint8."""
    a = alpha.astype(np.int32)[:, :, None]  # (H, W, 1)
    bg = np.asarray(background, dtype=np.int32).reshape(1, 1, 3)
    total = color.astype(np.int32) * 255 + bg * (255 - a)  # (H, W, 3), in units of 1/255
    return np.clip((total + 127) // 255, 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    """RGB image from a (H, W) uint8 grey array."""
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")  # (H, W, 3)


def _check_background(background) -> tuple[int, int, int]:
    try:
        bg = tuple(int(c) for c in background)
    except (TypeError, ValueError):
        raise ValueError(f"background must be an (r, g, b) tuple of 0-255 integers, got {background!r}; "
                         "use parse_color('white') or similar") from None
    if len(bg) != 3 or not all(0 <= c <= 255 for c in bg):
        raise ValueError(f"background must be an (r, g, b) tuple of 0-255 integers, got {background!r}; "
                         "use parse_color('white') or similar")
    return bg


def to_rgb(img: Image.Image, background=(255, 255, 255)) -> tuple[Image.Image, np.ndarray | None]:
    """Any Pillow mode as RGB with transparency composited on `background`, plus the alpha (H, W) uint8 or None.

    The alpha is returned whenever the image carries transparency information (an alpha channel or a transparent
    palette / colour key), even if every pixel happens to be opaque. 16-bit and 32-bit integer grey ('I;16*', 'I')
    is scaled from 0..65535 to 0..255; float grey ('F') follows Pillow's convention of a 0..255 scale (clipped).
    The input image is never modified.
    """
    bg = _check_background(background)
    mode = img.mode
    # A tRNS chunk (palette index or colour key) or a palette with alpha entries makes these modes transparent.
    keyed = mode in ("P", "L", "RGB", "1") and "transparency" in img.info
    palette_alpha = mode == "P" and img.palette is not None and img.palette.mode == "RGBA"
    if mode in ("RGB", "L", "1", "P", "CMYK", "YCbCr", "HSV", "RGBX") and not (keyed or palette_alpha):
        return img.convert("RGB"), None  # convert always returns a new image, even RGB -> RGB
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)  # (H, W); I;16B arrives as big-endian uint16
        return _grey_to_rgb(((values * 255 + 32767) // 65535).astype(np.uint8)), None  # scale, do not clip to 255
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)  # (H, W)
        return _grey_to_rgb(np.clip(np.rint(values), 0, 255).astype(np.uint8)), None
    if mode in ("RGBa", "La"):
        arr = np.asarray(img)  # (H, W, 4) or (H, W, 2), colour already multiplied by alpha
        color = arr[:, :, :3] if mode == "RGBa" else np.repeat(arr[:, :, :1], 3, axis=2)  # (H, W, 3)
        alpha = arr[:, :, -1].copy()  # (H, W)
        return Image.fromarray(_composite_premultiplied(color, alpha, bg), "RGB"), alpha
    if mode == "LAB":
        raise ValueError("to_rgb cannot convert a LAB image faithfully (Pillow would copy channels as if they were "
                         "RGB); convert it to RGB in an image editor first")
    if mode not in ("RGBA", "LA", "P", "PA", "RGB", "L", "1"):
        raise ValueError(f"to_rgb does not handle Pillow mode '{mode}'; expected one of RGB, RGBA, LA, L, 1, P, PA, "
                         "CMYK, YCbCr, I;16, I, F, RGBa. Re-save the image as PNG or JPEG")
    # Everything left carries straight alpha or a transparent colour: Pillow's RGBA conversion applies palettes,
    # tRNS chunks (palette index or colour key) and grey alpha, then we composite ourselves with exact rounding.
    rgba = img if mode == "RGBA" else img.convert("RGBA")
    alpha = rgba.getchannel("A")
    out = Image.new("RGB", rgba.size, bg)
    # Pillow's masked paste is the straight-alpha blend fg*a + bg*(1-a) with exact rounding of the /255, done in C
    # with the GIL released: the same numbers as round((fg*a + bg*(255-a)) / 255), several times faster, and
    # parallel on a thread pool.
    out.paste(rgba, (0, 0), alpha)
    return out, np.asarray(alpha)  # alpha (H, W) uint8


_NAMED_COLORS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}
_COLOR_FORMS = "'white', 'black', 'gray'/'grey', '#rrggbb', '#rgb' or 'r,g,b' with each value 0-255"


def parse_color(text: str) -> tuple[int, int, int]:
    """An (r, g, b) tuple from a colour name, '#rrggbb', '#rgb' or 'r,g,b' text."""
    if not isinstance(text, str):
        raise ValueError(f"Expected a colour as text ({_COLOR_FORMS}), got {type(text).__name__}.")
    s = text.strip().lower()
    if s in _NAMED_COLORS:
        return _NAMED_COLORS[s]
    if re.fullmatch(r"#[0-9a-f]{6}", s):
        return int(s[1:3], 16), int(s[3:5], 16), int(s[5:7], 16)
    if re.fullmatch(r"#[0-9a-f]{3}", s):
        return tuple(int(c, 16) * 17 for c in s[1:])  # '#f80' means '#ff8800'
    parts = [p.strip() for p in s.split(",")]
    if len(parts) == 3 and all(p.isdigit() for p in parts) and all(int(p) <= 255 for p in parts):
        return int(parts[0]), int(parts[1]), int(parts[2])
    raise ValueError(f"Cannot read '{text}' as a colour; use {_COLOR_FORMS}.")


# ---------------------------------------------------------------- geometry


def _check_size(what: str, width, height) -> None:
    if isinstance(width, bool) or isinstance(height, bool) or not isinstance(width, (int, np.integer)) \
            or not isinstance(height, (int, np.integer)) or width < 1 or height < 1:
        raise ValueError(f"{what} must be two positive integers (width, height), got {width!r} × {height!r}.")


def _resample(filter: str) -> Image.Resampling:
    if filter not in _RESAMPLE:
        raise ValueError(f"Unknown resize filter '{filter}'; choose one of {', '.join(FILTERS)}.")
    return _RESAMPLE[filter]


def crop_box_for_aspect(width: int, height: int, target_width: int, target_height: int) -> tuple[int, int, int, int]:
    """The largest centred (left, top, right, bottom) box of the target aspect ratio inside width × height."""
    _check_size("image size", width, height)
    _check_size("target size", target_width, target_height)
    if width * target_height >= height * target_width:  # source is wider (or equal): keep the full height
        box_h = height
        box_w = min(width, max(1, (height * target_width + target_height // 2) // target_height))  # rounded
    else:  # source is taller: keep the full width
        box_w = width
        box_h = min(height, max(1, (width * target_height + target_width // 2) // target_width))  # rounded
    left, top = (width - box_w) // 2, (height - box_h) // 2
    return left, top, left + box_w, top + box_h


def resize(img: Image.Image, width: int, height: int, filter: str = "lanczos",
           box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """`img` (or its `box` region) resized to exactly (width, height) with the named filter; the input is untouched."""
    _check_size("resize target", width, height)
    resample = _resample(filter)
    left, top, right, bottom = box or (0, 0, img.width, img.height)
    src_w, src_h = right - left, bottom - top
    if (src_w, src_h) == (width, height):
        return img.crop((left, top, right, bottom)) if box else img.copy()
    region = (left, top, right, bottom) if box else None
    if filter == "lanczos":
        # Box-average by the whole factor first (fast and area-correct), then LANCZOS for the remaining < 2x.
        factor_x, factor_y = max(1, src_w // width), max(1, src_h // height)
        if (factor_x > 1 or factor_y > 1) and img.mode not in ("1", "P"):  # reduce() has no palette mode
            img, region = img.reduce((factor_x, factor_y), box=region), None
            if img.size == (width, height):
                return img
    return img.resize((width, height), resample, box=region)  # resampling from the box: no intermediate crop


def center_crop(img: Image.Image, width: int, height: int, filter: str = "lanczos") -> Image.Image:
    """The largest centred crop of the target aspect ratio, resized to exactly (width, height)."""
    _check_size("crop target", width, height)
    _resample(filter)  # refuse a bad filter name before doing any work
    return resize(img, width, height, filter, box=crop_box_for_aspect(img.width, img.height, width, height))


def letterbox(img: Image.Image, width: int, height: int, color=(0, 0, 0), filter: str = "lanczos") -> Image.Image:
    """`img` scaled to fit inside (width, height), aspect kept, centred on a `color` canvas of exactly that size.

    RGB images take an (r, g, b) colour; single-channel masks (mode L) take a 0-255 value (or the colour's first
    component), so a mask and its image share the same geometry.
    """
    _check_size("letterbox target", width, height)
    _resample(filter)
    if img.mode not in ("RGB", "L"):
        raise ValueError(f"letterbox expects an RGB image (or an L mask), got mode '{img.mode}'; pass it through "
                         "to_rgb first.")
    if img.mode == "L":
        pad = int(color if isinstance(color, (int, float)) else color[0])
    else:
        pad = _check_background(color)
    scale = min(width / img.width, height / img.height)
    fit_w = min(width, max(1, round(img.width * scale)))  # at least 1 px: a 20000×1 strip still shows
    fit_h = min(height, max(1, round(img.height * scale)))
    canvas = Image.new(img.mode, (width, height), pad)
    canvas.paste(resize(img, fit_w, fit_h, filter), ((width - fit_w) // 2, (height - fit_h) // 2))
    return canvas


def fit_bucket(img: Image.Image, bucket_width: int, bucket_height: int, filter: str = "lanczos") -> Image.Image:
    """`img` scaled to cover the bucket (minimal crop) and centre-cropped to exactly (bucket_width, bucket_height).

    Covering then cropping the overflow is the same as cropping the largest centred box of the bucket's aspect and
    scaling it, which is what this does (one resample, no rounding of an intermediate size).
    """
    return center_crop(img, bucket_width, bucket_height, filter)


def flip_horizontal(img: Image.Image) -> Image.Image:
    """A left-right mirrored copy of `img`."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


# ---------------------------------------------------------------- buckets


def make_buckets(resolution, step: int = 64, min_side: int | None = None, max_side: int | None = None
                 ) -> list[tuple[int, int]]:
    """kohya-style aspect-ratio buckets of area at most resolution² (or w*h), sides multiples of `step`, sorted.

    For each width w (multiples of `step` in [min_side, max_side]) the height is the largest multiple of `step` with
    w*h <= max area; both orientations are included. The largest square bucket is always included: (res, res) when
    res is a multiple of step. When the target is smaller than `min_side`, `min_side` is lowered to the square's side
    so a small resolution still gets buckets. min_side defaults to half the square's side (kohya's 256 for 512
    training), so every resolution gets the same range of aspect ratios; max_side defaults to twice the resolution
    (the longer side for (w, h)).
    """
    if isinstance(resolution, (tuple, list)):
        if len(resolution) != 2:
            raise ValueError(f"resolution must be an int or a (width, height) pair, got {resolution!r}.")
        _check_size("bucket resolution", resolution[0], resolution[1])
        max_area, longest = resolution[0] * resolution[1], max(resolution)
    else:
        _check_size("bucket resolution", resolution, resolution)
        max_area, longest = resolution * resolution, resolution
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"bucket step must be a positive integer, got {step!r}; 64 is the usual value.")
    square = math.isqrt(max_area) // step * step
    if square < step:
        raise ValueError(f"Resolution {resolution} is smaller than the bucket step {step}; lower the step or raise "
                         "the resolution.")
    max_side = 2 * longest if max_side is None else max_side
    min_side = max(step, square // 2) if min_side is None else min_side
    low = min(min_side, square)
    low = -(-low // step) * step  # first multiple of step at or above min_side
    high = max_side // step * step  # last multiple of step at or below max_side
    buckets = {(square, square)}
    for w in range(low, high + 1, step):
        h = min(high, max_area // w // step * step)
        if h >= low:
            buckets.add((w, h))
            buckets.add((h, w))
    return sorted(buckets)


def choose_bucket(width: int, height: int, buckets) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to width/height in log space; ties go to the larger area."""
    _check_size("image size", width, height)
    if not buckets:
        raise ValueError("choose_bucket got no buckets; build them with make_buckets(resolution).")
    aspect = math.log(width / height)

    def distance(bucket):
        bw, bh = bucket
        # Rounded so mirror-image ratios (log 2 vs -log 1/2) compare equal despite float error.
        return round(abs(math.log(bw / bh) - aspect), 9), -bw * bh

    return tuple(min(buckets, key=distance))


def no_upscale_bucket(width: int, height: int, max_area: int, step: int = 64) -> tuple[int, int]:
    """A bucket at the image's own scale (kohya's bucket_no_upscale): sides rounded down to multiples of `step`.

    Images larger than `max_area` are first scaled down, aspect kept, to fit it. Each side is at least `step`.
    """
    _check_size("image size", width, height)
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"bucket step must be a positive integer, got {step!r}; 64 is the usual value.")
    if max_area < step * step:
        raise ValueError(f"max_area {max_area} is smaller than one {step}×{step} bucket; raise the resolution.")
    w, h = float(width), float(height)
    if width * height > max_area:
        scale = math.sqrt(max_area / (width * height))
        w, h = width * scale, height * scale
    bw, bh = max(step, int(w) // step * step), max(step, int(h) // step * step)
    while bw * bh > max_area:  # float rounding or the `step` floor overshot: shrink the longer side
        if bw >= bh and bw > step:
            bw -= step
        elif bh > step:
            bh -= step
        else:
            break
    return bw, bh


def _bucket_step(buckets) -> int:
    """The step the buckets were made with: the greatest common divisor of all their sides."""
    return math.gcd(*(side for bucket in buckets for side in bucket))


def _bucket_for(width: int, height: int, target_width: int, target_height: int, buckets, no_upscale: bool):
    """The bucket an image of this size goes to (shared by prepare_image and target_size so they cannot differ)."""
    if buckets is None:
        buckets = make_buckets((target_width, target_height))
    if not buckets:
        raise ValueError("buckets mode got an empty bucket list; pass None to use make_buckets((width, height)).")
    max_area = target_width * target_height
    if no_upscale and width * height <= max_area:
        return no_upscale_bucket(width, height, max_area, step=_bucket_step(buckets))
    return choose_bucket(width, height, buckets)


def _check_mode(mode: str) -> None:
    if mode not in PREP_MODES:
        raise ValueError(f"Unknown preparation mode '{mode}'; choose one of {', '.join(PREP_MODES)}.")


def prepare_image(img: Image.Image, mode: str, width: int, height: int, *, pad_color=(0, 0, 0),
                  filter: str = "lanczos", buckets=None, no_upscale: bool = False) -> Image.Image:
    """`img` prepared for training by `mode` (crop, letterbox, buckets or none); a new image, the input untouched.

    "buckets" uses `buckets` (default make_buckets((width, height))); with no_upscale=True an image whose area is at
    most width*height keeps its own scale via no_upscale_bucket (rounded to the buckets' step). no_upscale only
    affects buckets: in "crop" and "letterbox" modes a smaller image is still upscaled to (width, height).
    """
    _check_mode(mode)
    _resample(filter)
    _check_size("target size", width, height)
    if mode == "crop":
        return center_crop(img, width, height, filter)
    if mode == "letterbox":
        return letterbox(img, width, height, pad_color, filter)
    if mode == "buckets":
        bucket_w, bucket_h = _bucket_for(img.width, img.height, width, height, buckets, no_upscale)
        return fit_bucket(img, bucket_w, bucket_h, filter)
    return img.copy()  # "none"


def target_size(width: int, height: int, mode: str, target_width: int, target_height: int, *, buckets=None,
                no_upscale: bool = False) -> tuple[int, int]:
    """The (width, height) prepare_image would produce for a source of this size, without decoding it."""
    _check_mode(mode)
    _check_size("image size", width, height)
    _check_size("target size", target_width, target_height)
    if mode in ("crop", "letterbox"):
        return target_width, target_height
    if mode == "buckets":
        return _bucket_for(width, height, target_width, target_height, buckets, no_upscale)
    return width, height  # "none"


def write_image(path, image: Image.Image, image_format: str = "PNG", **options) -> None:
    """Encodes `image` in memory (Pillow `options` such as pnginfo or quality) and writes it through
    core.paths.atomic_write_bytes, so no reader ever sees a half-written image."""
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    atomic_write_bytes(path, buffer.getvalue())
