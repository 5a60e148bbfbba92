"""Drawing helpers: wrapped text, labelled contact sheets, horizontal bar charts, PIL <-> IMAGE tensors.

Nothing here knows ComfyUI. These functions only lay out pixels with PIL; what goes on a sheet or a chart (which
samples, which numbers) is decided by the caller. Every function returns a new image and leaves its inputs untouched.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageColor, ImageDraw, ImageFont

ELLIPSIS = "…"
LABEL_GAP = 4  # pixels between a thumbnail's cell and its label
ROW_GAP = 6  # pixels between two bars of a chart


@lru_cache(maxsize=32)
def load_font(size: int = 16) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's bundled default font at `size` pixels, or the fixed-size bitmap default where FreeType is missing."""
    if size < 1:
        raise ValueError(f"Font size must be at least 1 pixel; got {size}. Pass a positive size such as 14.")
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        # Pillow < 10.1 has no `size` argument (TypeError); without FreeType the scalable font cannot load.
        return ImageFont.load_default()


def _text_width(font, text: str) -> float:
    return font.getlength(text)


def line_height(font) -> int:
    """Pixel height of one line of text in `font`."""
    # "Ag" spans ascender to descender, so every line of any text fits this height.
    return font.getbbox("Ag")[3]


def as_rgb(color) -> tuple[int, int, int]:
    """An (r, g, b) tuple from a tuple or a PIL colour name."""
    if isinstance(color, str):
        return ImageColor.getrgb(color)[:3]
    if len(color) < 3:
        raise ValueError(f"Expected an (r, g, b) colour; got {color!r}. Pass three 0..255 integers or a name such "
                         "as 'white'.")
    return tuple(int(c) for c in color[:3])


def _break_word(word: str, font, max_width: int) -> list[str]:
    """Splits a word wider than `max_width` into pieces that each fit, filling each piece greedily."""
    pieces, current = [], ""
    for ch in word:
        if _text_width(font, ch) > max_width:
            raise ValueError(f"Cannot wrap text into {max_width}px: the character {ch!r} alone is "
                             f"{_text_width(font, ch):.0f}px wide. Widen the column or use a smaller font.")
        if _text_width(font, current + ch) <= max_width:
            current += ch
        else:
            pieces.append(current)  # not empty: `ch` alone fits, so only a non-empty prefix can overflow
            current = ch
    pieces.append(current)
    return pieces


def _wrap_paragraph(paragraph: str, font, max_width: int) -> list[str]:
    """Greedy wrap of one newline-free paragraph; a blank paragraph is one empty line."""
    lines, current = [], ""
    for word in paragraph.split():
        candidate = f"{current} {word}" if current else word
        if _text_width(font, candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        if _text_width(font, word) <= max_width:
            current = word
        else:
            *full, current = _break_word(word, font, max_width)
            lines.extend(full)
    lines.append(current)
    return lines


def _with_ellipsis(line: str, font, max_width: int) -> str:
    """`line` shortened from the end until it plus an ellipsis fits `max_width`."""
    if _text_width(font, ELLIPSIS) > max_width:
        raise ValueError(f"Cannot truncate text into {max_width}px: the ellipsis alone is "
                         f"{_text_width(font, ELLIPSIS):.0f}px wide. Widen the column or use a smaller font.")
    line = line.rstrip()
    while line and _text_width(font, line + ELLIPSIS) > max_width:
        line = line[:-1].rstrip()
    return line + ELLIPSIS


def wrap_text(text: str, font, max_width: int, max_lines: int | None = None) -> list[str]:
    """Lines of `text` that each measure at most `max_width` pixels, word-wrapped, ending in "…" if cut at
    `max_lines`."""
    if max_width < 1:
        raise ValueError(f"max_width must be at least 1 pixel; got {max_width}.")
    if max_lines is not None and max_lines < 1:
        raise ValueError(f"max_lines must be None (no limit) or at least 1; got {max_lines}.")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        return []
    # Blank lines inside the text are kept as empty lines; blank lines at either end carry nothing.
    paragraphs = text.strip("\n").split("\n")
    lines = [line for p in paragraphs for line in _wrap_paragraph(p, font, max_width)]
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _with_ellipsis(lines[-1], font, max_width)
    return lines


def text_block_height(lines, font, line_spacing: int = 4) -> int:
    """Pixel height of `lines` drawn one under another with `line_spacing` pixels between them (0 for no lines)."""
    n = len(lines)
    if n == 0:
        return 0
    return n * line_height(font) + (n - 1) * line_spacing


def draw_lines(draw: ImageDraw.ImageDraw, lines, font, left: int, top: int, width: int, fill,
                line_spacing: int = 4, centre: bool = True) -> None:
    """Draws `lines` from `top` down, each centred (or left-aligned) in the span [left, left + width)."""
    step = line_height(font) + line_spacing
    for i, line in enumerate(lines):
        x = left + (width - _text_width(font, line)) / 2 if centre else left
        draw.text((x, top + i * step), line, font=font, fill=fill)


def flatten_onto(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """An RGB copy of `image`; transparent parts show `background` rather than whatever colour they hide."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, background + (255,))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _fit(image: Image.Image, box: int) -> Image.Image:
    """`image` scaled up or down so its longer side is `box` pixels, aspect ratio kept."""
    scale = min(box / image.width, box / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def contact_sheet(images: list[Image.Image], labels: list[str], *, columns: int = 4, cell: int = 256,
                  font_size: int = 14, max_label_lines: int = 4, background=(255, 255, 255), text_color=(0, 0, 0),
                  margin: int = 8, title: str | None = None) -> Image.Image:
    """A grid of thumbnails, each fitted into a cell x cell box with its wrapped label below, as one RGB image.

    Layout: width = margin + columns * (cell + margin), columns reduced to len(images) when fewer. Height =
    margin + title band + rows * (cell + 4 + label height + margin), where the label height is that of
    max_label_lines lines, so every row is the same height whatever its labels say.
    """
    if len(images) != len(labels):
        raise ValueError(f"contact_sheet needs one label per image; got {len(images)} images and {len(labels)} "
                         f"labels. Pass labels of the same length (use '' for no label).")
    if not images:
        raise ValueError("nothing to draw: contact_sheet got no images. Pass at least one image.")
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise ValueError(f"contact_sheet expects PIL images; item {i} is a {type(im).__name__}. "
                             f"Convert tensors with image_tensor_to_pil first.")
    if columns < 1 or cell < 1 or margin < 0 or max_label_lines < 0:
        raise ValueError(f"contact_sheet needs columns >= 1, cell >= 1, margin >= 0 and max_label_lines >= 0; "
                         f"got columns={columns}, cell={cell}, margin={margin}, max_label_lines={max_label_lines}.")
    bg, fg = as_rgb(background), as_rgb(text_color)
    font = load_font(font_size)
    columns = min(columns, len(images))
    rows = math.ceil(len(images) / columns)
    width = margin + columns * (cell + margin)

    title_font = load_font(font_size + 4)
    title_lines = wrap_text(title, title_font, width - 2 * margin, max_lines=2) if title else []
    title_band = text_block_height(title_lines, title_font) + margin if title_lines else 0

    label_band = text_block_height([""] * max_label_lines, font)
    row_height = cell + LABEL_GAP + label_band + margin
    height = margin + title_band + rows * row_height

    sheet = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(sheet)
    draw_lines(draw, title_lines, title_font, margin, margin, width - 2 * margin, fg)
    for i, (image, label) in enumerate(zip(images, labels)):
        row, col = divmod(i, columns)
        left = margin + col * (cell + margin)
        top = margin + title_band + row * row_height
        thumb = _fit(flatten_onto(image, bg), cell)
        sheet.paste(thumb, (left + (cell - thumb.width) // 2, top + (cell - thumb.height) // 2))
        if max_label_lines and label:
            lines = wrap_text(str(label), font, cell, max_lines=max_label_lines)
            draw_lines(draw, lines, font, left, top + cell + LABEL_GAP, cell, fg)
    return sheet


def _format_value(value: float) -> str:
    """Whole numbers with thousands separators, others to four significant digits."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4g}"


def bar_chart(values: list[tuple[str, float]], *, title: str = "", width: int = 640, bar_height: int = 22,
              font_size: int = 14, color=(70, 110, 200)) -> Image.Image:
    """A horizontal bar chart: label, bar proportional to its value (the largest fills the bar area), value text."""
    margin = 8
    font = load_font(font_size)
    title_font = load_font(font_size + 2)
    line_h = line_height(font)
    bar_color = as_rgb(color)
    if width < 8 * margin:
        raise ValueError(f"bar_chart needs width >= {8 * margin} pixels; got {width}. Pass a wider width.")
    if bar_height < 1:
        raise ValueError(f"bar_chart needs bar_height >= 1; got {bar_height}.")

    title_lines = wrap_text(title, title_font, width - 2 * margin, max_lines=2) if title else []
    title_band = text_block_height(title_lines, title_font) + margin if title_lines else 0

    if not values:
        image = Image.new("RGB", (width, 2 * margin + title_band + line_h), "white")
        draw = ImageDraw.Draw(image)
        draw_lines(draw, title_lines, title_font, margin, margin, width - 2 * margin, (0, 0, 0), centre=False)
        draw.text((margin, margin + title_band), "no data", font=font, fill=(0, 0, 0))
        return image

    for label, value in values:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"bar_chart draws finite values >= 0; got {value!r} for {label!r}. "
                             f"Drop or clamp that row before charting.")
    value_texts = [_format_value(v) for _, v in values]
    value_w = math.ceil(max(_text_width(font, t) for t in value_texts))
    label_w = max(margin, (width - 2 * margin) * 3 // 10)  # a fixed share of the width keeps charts comparable
    bar_left = margin + label_w + margin
    bar_area = width - bar_left - margin - value_w - margin
    if bar_area < 1:
        raise ValueError(f"bar_chart width {width}px leaves no room for bars next to values as wide as "
                         f"{value_w}px. Pass a wider width.")
    row_h = max(bar_height, line_h)
    label_lines = max(1, (row_h + 4) // (line_h + 4))  # as many label lines as fit beside one bar
    height = margin + title_band + len(values) * row_h + (len(values) - 1) * ROW_GAP + margin

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw_lines(draw, title_lines, title_font, margin, margin, width - 2 * margin, (0, 0, 0), centre=False)
    largest = max(v for _, v in values)
    for i, ((label, value), text) in enumerate(zip(values, value_texts)):
        top = margin + title_band + i * (row_h + ROW_GAP)
        lines = wrap_text(str(label), font, label_w, max_lines=label_lines)
        text_top = top + (row_h - text_block_height(lines, font)) // 2
        draw_lines(draw, lines, font, margin, text_top, label_w, (0, 0, 0), centre=False)
        length = round(bar_area * value / largest) if largest > 0 else 0
        bar_top = top + (row_h - bar_height) // 2
        if length > 0:
            draw.rectangle((bar_left, bar_top, bar_left + length - 1, bar_top + bar_height - 1), fill=bar_color)
        draw.text((bar_left + length + margin, top + (row_h - line_h) // 2), text, font=font, fill=(0, 0, 0))
    return image


def pil_to_image_tensor(images: list[Image.Image]) -> torch.Tensor:
    """A ComfyUI IMAGE batch: float32 (B, H, W, 3) in 0..1 on the CPU, from same-sized PIL images (alpha dropped)."""
    if not images:
        raise ValueError("pil_to_image_tensor got no images; pass at least one.")
    sizes = [im.size for im in images]
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sizes)
        raise ValueError(f"An IMAGE batch needs one size for all images; got {listed}. "
                         f"Resize or letterbox them to one size first.")
    arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    return torch.from_numpy(np.stack(arrays).astype(np.float32) / 255.0)


def to_8bit(pixels: torch.Tensor) -> np.ndarray:
    """0..1 pixels as uint8 exactly as ComfyUI's SaveImage makes them (255·x, clipped, truncated; NaN as 0), so every
    image Atelier saves or shows has the levels a stock SaveImage file of the same IMAGE has."""
    values = torch.nan_to_num(pixels.detach().to("cpu", torch.float32), nan=0.0, posinf=1.0, neginf=0.0).numpy()
    return np.clip(255.0 * values, 0, 255).astype(np.uint8)  # SaveImage: np.clip(255. * i, 0, 255).astype(uint8)


def image_tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """RGB PIL images from an IMAGE batch (B, H, W, C) with C of 1 (grey), 3 (RGB) or 4 (RGBA, alpha dropped)."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected an IMAGE batch of shape (B, H, W, C) with C in 1, 3 or 4; got shape "
                         f"{tuple(images.shape)}. Add a batch dimension with .unsqueeze(0) for a single image.")
    arrays = to_8bit(images)
    result = []
    for a in arrays:
        if a.shape[-1] == 1:
            result.append(Image.fromarray(a[..., 0]).convert("RGB"))
        else:
            result.append(Image.fromarray(np.ascontiguousarray(a[..., :3])))
    return result


def line_chart(values: list[float], *, title: str = "", width: int = 640, height: int = 240, font_size: int = 14,
               color=(200, 60, 60), smooth: float = 0.9) -> Image.Image:
    """A loss-style curve: raw values in a light tint, an exponential moving average (weight `smooth`) on top."""
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = load_font(font_size)
    top = font_size + 10 if title else 6
    if title:
        draw.text((8, 4), title, fill=(0, 0, 0), font=font)
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        draw.text((8, top), "no data", fill=(0, 0, 0), font=font)
        return img
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    left, right, bottom = 50, width - 8, height - 20
    draw.text((4, top), f"{hi:.3g}", fill=(0, 0, 0), font=font)
    draw.text((4, bottom - font_size), f"{lo:.3g}", fill=(0, 0, 0), font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(120, 120, 120))

    def points(series):
        n = max(len(series) - 1, 1)
        return [(left + (right - left) * i / n, bottom - (bottom - top) * (v - lo) / span)
                for i, v in enumerate(series)]

    ema, smoothed = None, []
    for v in finite:
        ema = v if ema is None else smooth * ema + (1 - smooth) * v
        smoothed.append(ema)
    tint = tuple(int(c + (255 - c) * 0.6) for c in as_rgb(color))
    if len(finite) > 1:
        draw.line(points(finite), fill=tint, width=1)
        draw.line(points(smoothed), fill=as_rgb(color), width=2)
    draw.text((left, bottom + 2), f"{len(finite)} steps", fill=(0, 0, 0), font=font)
    return img
