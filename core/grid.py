"""Comparison grids: axis value syntax, the cell plan, the labelled drawing, pages, and reproducible metadata.

Nothing here knows ComfyUI. An artist judges a LoRA by a grid (epoch x strength x CFG / steps / sampler / seed /
prompt); this module turns the axis text typed in the graph into values, orders the cells to generate, draws the
labelled sheet from finished images, and stores what made it in the PNG so the grid can be reproduced.

Drawing layout (all in pixels, `m` = margin, `fs` = font_size):
- column width = max(widest image in the column, MIN_COLUMN_FONTS * fs + 2 * TEXT_INSET); row image height =
  max(tallest image in the row, one text line). A column or row with no image at all takes the largest image side
  seen anywhere (MISSING_SIDE when every cell is missing).
- width = m + (row_label_width(fs) + m, only when there are row labels) + sum(column widths) + columns * m.
- height = m + title band + x-title band + column-label band + sum over rows of (row height + caption band + m);
  a band is its wrapped text height plus m (absent when it has no text); a caption band is CAPTION_GAP + the
  tallest caption block in that row (absent when the row has no caption).
- text wraps TEXT_INSET narrower than its box on each side, so no glyph's ink leaves the box.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from itertools import product

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from .images import write_image
from .draw import draw_lines, flatten_onto, line_height, as_rgb, load_font, text_block_height, wrap_text
from .lora_math import STRENGTH_LIMIT
from .paths import base_name, natural_key

AXIS_KINDS = ("lora", "strength", "cfg", "steps", "sampler", "scheduler", "seed", "prompt_sr", "negative", "denoise",
              "checkpoint")
NUMERIC_KINDS = {"strength": float, "cfg": float, "steps": int, "seed": int, "denoise": float}
# The range of each numeric axis: the same as the node inputs of that name, so an axis cannot reach what a widget
# cannot (a strength of 1e30, a million steps).
AXIS_RANGES = {"strength": (-STRENGTH_LIMIT, STRENGTH_LIMIT), "cfg": (0.0, 30.0), "steps": (1, 200),
               "seed": (0, 2**64 - 1), "denoise": (0.0, 1.0)}
NAME_KINDS = ("lora", "checkpoint", "sampler", "scheduler")
BASELINE_KINDS = ("lora", "strength")
BASELINES = (None, "row", "column")
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
FLOAT_DECIMALS = 10
METADATA_KEY = "atelier_grid"
METADATA_VERSION = 1

ROW_LABEL_MIN = 120  # pixels: the narrowest row-label column
ROW_LABEL_FONTS = 8  # the row-label column is this many font sizes wide when that exceeds ROW_LABEL_MIN
MIN_COLUMN_FONTS = 3  # a column is at least this many font sizes wide, so labels can always wrap
MISSING_SIDE = 128  # cell side when a grid has no image at all
CAPTION_GAP = 4  # pixels between an image and its caption
TEXT_INSET = 2  # text wraps this much narrower than its box on each side: glyph ink may overhang its advance width
LINE_SPACING = 4
MISSING_FILL = (224, 224, 224)
MISSING_TEXT = (110, 110, 110)
TEXT_COLOR = (0, 0, 0)
LABEL_BAND_FRACTION = 0.25  # paginate() counts each row as cell_h * (1 + this)

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_SINGLE = re.compile(rf"^({_NUMBER})$")
_RANGE = re.compile(rf"^({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\)|\[\s*(\d+)\s*\])?$")


# --- axis values ----------------------------------------------------------------------------------------------------

def _no_values(kind: str, text: str) -> ValueError:
    return ValueError(f"axis '{kind}' has no values: got {text!r}. Type at least one value, e.g. "
                      f"{_EXAMPLES.get(kind, 'a, b')!r}.")


_EXAMPLES = {"strength": "0, 0.5, 1", "cfg": "4-8 (+1)", "steps": "20, 30", "seed": "1-4", "denoise": "0.3-1 [4]",
             "sampler": "euler, dpmpp_2m", "scheduler": "normal, karras", "lora": "*", "checkpoint": "*",
             "prompt_sr": "red, blue, green", "negative": "blurry | lowres, bad hands"}


def _number(kind: str, token: str, text: str):
    """One number of a numeric axis as an int (int kinds, whole numbers only) or a float."""
    if NUMERIC_KINDS[kind] is int:
        if re.fullmatch(r"[+-]?\d+", token):
            return int(token)
        value = float(token)
        if not value.is_integer():
            raise ValueError(f"axis '{kind}' takes whole numbers; got {token!r} in {text!r}. "
                             f"Write integers such as '20, 30' or '10-40 (+10)'.")
        return int(value)
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"axis '{kind}' takes finite numbers; got {token!r} in {text!r}.")
    return value


def _clean(kind: str, value):
    """A float rounded to FLOAT_DECIMALS (no 0.30000000000000004, no -0.0); ints unchanged."""
    if NUMERIC_KINDS[kind] is int:
        return int(value)
    return round(float(value), FLOAT_DECIMALS) + 0.0


def _range(kind: str, item: str, match: re.Match, text: str, max_values: int) -> list:
    start, end = _number(kind, match[1], text), _number(kind, match[2], text)
    step_text, count_text = match[3], match[4]
    if count_text is not None:
        count = int(count_text)
        if count < 1:
            raise ValueError(f"axis '{kind}': a count in [ ] must be at least 1; got {item!r}. Use e.g. '0-1 [5]'.")
        if count > max_values:
            raise ValueError(f"axis '{kind}': {item!r} asks for {count} values, more than the limit of {max_values}. "
                             f"Ask for fewer values.")
        if count == 1:
            return [_clean(kind, start)]
        values = [start + (end - start) * i / (count - 1) for i in range(count)]
        if NUMERIC_KINDS[kind] is int:
            bad = [v for v in values if not float(v).is_integer()]
            if bad:
                raise ValueError(f"axis '{kind}' takes whole numbers, but {item!r} spaces {count} values "
                                 f"{round(bad[0], 4)} apart from whole ones. Pick a count that divides the range "
                                 f"evenly or use a step like '(+2)'.")
        return [_clean(kind, v) for v in values]
    if step_text is None:
        step = 1 if end >= start else -1
    else:
        step = _number(kind, step_text, text)
    if step == 0 or (end - start) * step < 0:
        direction = "a positive step such as (+1)" if end > start else "a negative step such as (-1)"
        raise ValueError(f"axis '{kind}': the step in {item!r} never reaches {match[2]} from {match[1]}. "
                         f"Use {direction}.")
    count = math.floor((end - start) / step + 1e-9) + 1
    if count > max_values:
        raise ValueError(f"axis '{kind}': {item!r} asks for {count} values, more than the limit of {max_values}. "
                         f"Use a bigger step or a count like '[5]'.")
    return [_clean(kind, start + i * step) for i in range(count)]


def _numeric_values(kind: str, text: str, max_values: int) -> list:
    values = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        single = _SINGLE.match(item)
        if single:
            values.append(_clean(kind, _number(kind, item, text)))
            continue
        ranged = _RANGE.match(item)
        if not ranged:
            raise ValueError(f"axis '{kind}': cannot read {item!r} in {text!r}. Write numbers or ranges separated "
                             f"by commas: '1, 2', '1-10', '1-10 (+2)', '10-1 (-3)', '0-1 [5]', '-1-1 (+0.5)'.")
        values.extend(_range(kind, item, ranged, text, max_values))
        if len(values) > max_values:
            break
    low, high = AXIS_RANGES[kind]
    outside = [v for v in values if not low <= v <= high]
    if outside:
        raise ValueError(f"axis '{kind}': {_format_number(outside[0])} is outside {_format_number(low)} to "
                         f"{_format_number(high)}, the range of the node's own {kind} input. Use values in that "
                         "range.")
    return values


def _valid_list(choices: list[str], limit: int = 40) -> str:
    shown = ", ".join(choices[:limit])
    return shown + (f" and {len(choices) - limit} more" if len(choices) > limit else "")


def _name_values(kind: str, text: str, choices: list[str] | None) -> list:
    names = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if kind in ("lora", "checkpoint") and ("*" in item or "?" in item):
            if not choices:
                raise ValueError(f"axis '{kind}': the pattern {item!r} needs a list of available {kind} files to "
                                 f"match against, and none was given. Name the files instead.")
            pattern = item.replace("\\", "/")
            matched = [c for c in choices if fnmatchcase(c.replace("\\", "/"), pattern)]
            if not matched:
                raise ValueError(f"axis '{kind}': the pattern {item!r} matched none of the {len(choices)} available "
                                 f"files: {_valid_list(choices)}. Check the folder name.")
            names.extend(sorted(matched, key=natural_key))
            continue
        if choices is not None and item not in choices:
            raise ValueError(f"axis '{kind}': {item!r} is not available. Valid {kind} values: "
                             f"{_valid_list(list(choices))}.")
        names.append(item)
    return names


def _prompt_sr_values(text: str) -> list:
    # csv lets a replacement hold a comma when quoted, as in A1111's Prompt S/R.
    items = [item.strip() for item in next(csv.reader([text], skipinitialspace=True), [])]
    if not items or not items[0]:
        raise ValueError(f"axis 'prompt_sr' needs the text to search for as its first item; got {text!r}. "
                         f"Write e.g. 'red, blue, green' to replace 'red' in the prompt with each colour.")
    return items


def parse_values(kind: str, text: str, *, choices: list[str] | None = None, max_values: int = 1000) -> list:
    """The values of one axis from its text, in order.

    Numeric kinds: items separated by commas, each a number or a range: '1-10' (step 1, both ends included),
    '1-10 (+2)', '10-1 (-3)', '0-1 [5]' (5 evenly spaced values), '-1-1 (+0.5)'; floats rounded to 10 decimals.
    sampler / scheduler / lora / checkpoint: names separated by commas, checked against `choices` when given; a
    lora or checkpoint item with '*' or '?' ('*', 'folder/*') expands to the matching choices in natural order.
    prompt_sr: the first item is the text to search for and every item (the first too) is a replacement; quote an
    item to keep a comma in it. negative: prompts separated by ' | ', since negative prompts hold commas.
    """
    if kind not in AXIS_KINDS:
        raise ValueError(f"Unknown axis kind {kind!r}. Valid kinds: {', '.join(AXIS_KINDS)}.")
    if not isinstance(text, str):
        raise ValueError(f"axis '{kind}' expects its values as text; got a {type(text).__name__}.")
    if max_values < 1:
        raise ValueError(f"max_values must be at least 1; got {max_values}.")
    if not text.strip():
        raise _no_values(kind, text)
    if kind in NUMERIC_KINDS:
        values = _numeric_values(kind, text, max_values)
    elif kind in NAME_KINDS:
        values = _name_values(kind, text, choices)
    elif kind == "prompt_sr":
        values = _prompt_sr_values(text)
    else:  # negative: prompts contain commas, so items are separated by ' | '
        values = [item.strip() for item in re.split(r"\s+\|\s+", text.strip()) if item.strip()]
    if not values:
        raise _no_values(kind, text)
    if len(values) > max_values:
        raise ValueError(f"axis '{kind}' has {len(values)} or more values, more than the limit of {max_values}. "
                         f"Use fewer values or a bigger step.")
    return values


def _format_number(value) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


def model_label(name: str) -> str:
    """A model or LoRA file as grids and reports label it: its name without folders or model extension."""
    base = base_name(name)
    for ext in MODEL_EXTENSIONS:
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def run_file_label(kind: str, metadata: dict, name: str) -> str:
    """A training run's file as a grid labels it, from its kohya metadata: "epoch 2" (ss_epoch), "step 100"
    (ss_steps), "final (epoch 3)"; the file name without folder or extension when the metadata lacks the number."""
    epoch, steps = str(metadata.get("ss_epoch", "")).strip(), str(metadata.get("ss_steps", "")).strip()
    if kind == "epoch" and epoch.isdigit():
        return f"epoch {int(epoch)}"
    if kind == "step" and steps.isdigit():
        return f"step {int(steps)}"
    if kind == "final":
        return f"final (epoch {int(epoch)})" if epoch.isdigit() else "final"
    return model_label(name)


@dataclass(frozen=True)
class Axis:
    kind: str
    values: tuple
    label: str = ""  # the axis title; empty means the kind
    value_labels: tuple = ()  # display text per value (e.g. "epoch 2" from a LoRA's metadata); empty = derived

    def __post_init__(self):
        if self.kind not in AXIS_KINDS:
            raise ValueError(f"Unknown axis kind {self.kind!r}. Valid kinds: {', '.join(AXIS_KINDS)}.")
        object.__setattr__(self, "values", tuple(self.values))
        object.__setattr__(self, "value_labels", tuple(map(str, self.value_labels)))
        if not self.values:
            raise _no_values(self.kind, "")
        if self.value_labels and len(self.value_labels) != len(self.values):
            raise ValueError(f"axis '{self.kind}' has {len(self.values)} values but {len(self.value_labels)} value "
                             "labels; give one label per value, or none to derive them.")
        if not self.label:
            object.__setattr__(self, "label", self.kind)

    def labels(self) -> list[str]:
        """Display text per value: the given labels, else compact numbers, model names without folder or extension,
        the S/R replacement."""
        if self.value_labels:
            return list(self.value_labels)
        if self.kind in NUMERIC_KINDS:
            return [_format_number(v) for v in self.values]
        if self.kind in ("lora", "checkpoint"):
            return [model_label(v) for v in self.values]
        return [str(v) for v in self.values]


# --- the cell plan --------------------------------------------------------------------------------------------------

def plan_cells(x: Axis, y: Axis | None = None, z: Axis | None = None, *, baseline: str | None = None,
               seeds_per_cell: int = 1, max_cells: int = 1024, megapixels_per_cell: float = 0.25,
               max_megapixels: float = 256.0) -> list[dict]:
    """Every cell to generate, pages (z) outermost, then rows (y), then columns (x), then seed index."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}; got {baseline!r}.")
    if seeds_per_cell < 1:
        raise ValueError(f"seeds_per_cell must be at least 1; got {seeds_per_cell}.")
    kinds = [a.kind for a in (x, y, z) if a is not None]
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        raise ValueError(f"Two axes vary the same setting ({', '.join(repeated)}); each axis needs its own kind. "
                         f"Put all values of one setting on one axis.")
    baseline_axis = {"row": y, "column": x}.get(baseline)
    if baseline is not None and (baseline_axis is None or baseline_axis.kind not in BASELINE_KINDS):
        which = "y (rows)" if baseline == "row" else "x (columns)"
        got = "no axis" if baseline_axis is None else f"'{baseline_axis.kind}'"
        raise ValueError(f"baseline='{baseline}' adds a 'no LoRA' reference along the {which} axis, which must be "
                         f"one of {', '.join(BASELINE_KINDS)}; got {got}. Put the LoRA or strength axis there or "
                         f"set baseline to None.")

    xs = ([None] if baseline == "column" else []) + list(x.values)
    ys = ([None] if baseline == "row" else []) + (list(y.values) if y is not None else [None])
    zs = list(z.values) if z is not None else [None]
    count = len(zs) * len(ys) * len(xs) * seeds_per_cell
    megapixels = count * megapixels_per_cell
    if count > max_cells or megapixels > max_megapixels:
        raise ValueError(f"This grid asks for {count} cells ({len(xs)} columns x {len(ys)} rows x {len(zs)} pages x "
                         f"{seeds_per_cell} seeds) = {megapixels:g} megapixels; the limits are {max_cells} cells and "
                         f"{max_megapixels:g} megapixels. Use fewer values per axis or split the grid.")

    cells = []
    for (page, zv), (row, yv), (col, xv), seed in product(enumerate(zs), enumerate(ys), enumerate(xs),
                                                          range(seeds_per_cell)):
        is_baseline = (baseline == "row" and row == 0) or (baseline == "column" and col == 0)
        cells.append({"page": page, "row": row, "col": col, "x": xv, "y": yv, "z": zv, "seed_index": seed,
                      "baseline": is_baseline})
    return cells


# --- drawing --------------------------------------------------------------------------------------------------------

def row_label_width(font_size: int) -> int:
    """Width in pixels of the row-label column for a font size: ROW_LABEL_FONTS sizes, at least ROW_LABEL_MIN."""
    return max(ROW_LABEL_MIN, font_size * ROW_LABEL_FONTS)


def _check_images(images, captions) -> tuple[int, int]:
    if not isinstance(images, (list, tuple)) or not images or not all(isinstance(r, (list, tuple)) for r in images):
        raise ValueError("draw_grid expects images as a non-empty list of rows (images[row][col]); "
                         f"got {type(images).__name__}. Wrap a single row as [[a, b, c]].")
    cols = len(images[0])
    if cols == 0 or any(len(r) != cols for r in images):
        raise ValueError(f"draw_grid needs every row to hold the same number of cells (at least 1); got row "
                         f"lengths {[len(r) for r in images]}. Use None for a missing cell.")
    for r, row in enumerate(images):
        for c, im in enumerate(row):
            if im is not None and not isinstance(im, Image.Image):
                raise ValueError(f"draw_grid expects PIL images or None; images[{r}][{c}] is a "
                                 f"{type(im).__name__}. Convert tensors with image_tensor_to_pil first.")
    if captions is not None and (len(captions) != len(images) or any(len(a) != cols for a in captions)):
        raise ValueError(f"captions must match images: {len(images)} rows of {cols}; got "
                         f"{[len(a) for a in captions]} per row. Use '' for no caption.")
    return len(images), cols


def _axis_labels(given, axis: Axis | None, count: int, what: str, option: str) -> list[str] | None:
    if given is None and axis is None:
        return None
    labels = list(given) if given is not None else axis.labels()
    if len(labels) != count:
        source = f"{option}" if given is not None else f"axis '{axis.kind}' ({len(labels)} values)"
        raise ValueError(f"draw_grid got {count} {what} of images but {len(labels)} labels from {source}. "
                         f"Pass {option} with one label per {what[:-1]} (a baseline adds one, e.g. 'no LoRA').")
    return [str(t) for t in labels]


def draw_grid(images: list[list[Image.Image | None]], x: Axis, y: Axis | None = None, *, title: str = "",
              x_labels: list[str] | None = None, y_labels: list[str] | None = None,
              captions: list[list[str]] | None = None, font_size: int = 18, margin: int = 12,
              max_label_lines: int = 3, background=(255, 255, 255)) -> Image.Image:
    """The labelled grid of images[row][col] as one RGB image (layout in the module docstring; None = missing)."""
    rows, cols = _check_images(images, captions)
    if margin < 0 or max_label_lines < 1:
        raise ValueError(f"draw_grid needs margin >= 0 and max_label_lines >= 1; got margin={margin}, "
                         f"max_label_lines={max_label_lines}.")
    col_text = _axis_labels(x_labels, x, cols, "columns", "x_labels")
    row_text = _axis_labels(y_labels, y, rows, "rows", "y_labels")
    bg = as_rgb(background)
    font, axis_font, title_font = load_font(font_size), load_font(font_size + 2), load_font(font_size + 6)
    line_h = line_height(font)

    present = [im for row in images for im in row if im is not None]
    fallback_w = max((im.width for im in present), default=MISSING_SIDE)
    fallback_h = max((im.height for im in present), default=MISSING_SIDE)
    col_w = [max(MIN_COLUMN_FONTS * font_size + 2 * TEXT_INSET,
                 max((images[r][c].width for r in range(rows) if images[r][c] is not None), default=fallback_w))
             for c in range(cols)]
    text_w = [w - 2 * TEXT_INSET for w in col_w]
    row_h = [max(line_h, max((im.height for im in row if im is not None), default=fallback_h)) for row in images]

    has_rows = row_text is not None
    label_w = row_label_width(font_size) if has_rows else 0
    grid_left = margin + (label_w + margin if has_rows else 0)
    col_left = [grid_left + sum(col_w[:c]) + c * margin for c in range(cols)]
    grid_span = sum(col_w) + (cols - 1) * margin
    width = grid_left + sum(col_w) + cols * margin

    title_lines = wrap_text(title, title_font, width - 2 * margin - 2 * TEXT_INSET, max_lines=2) if title else []
    title_band = text_block_height(title_lines, title_font, LINE_SPACING) + margin if title_lines else 0
    x_title = wrap_text(x.label, axis_font, grid_span - 2 * TEXT_INSET, max_lines=2)
    x_title_band = text_block_height(x_title, axis_font, LINE_SPACING) + margin if x_title else 0
    col_lines = [wrap_text(t, font, text_w[c], max_lines=max_label_lines) for c, t in enumerate(col_text)]
    y_title = (wrap_text(y.label, axis_font, label_w - 2 * TEXT_INSET, max_lines=max_label_lines)
               if y is not None else [])
    label_content = max([text_block_height(ls, font, LINE_SPACING) for ls in col_lines]
                        + [text_block_height(y_title, axis_font, LINE_SPACING)])
    label_band = label_content + margin if label_content else 0

    if captions is None:
        caption_lines = [[[]] * cols for _ in range(rows)]
    else:
        caption_lines = [[wrap_text(str(t), font, text_w[c], max_lines=max_label_lines) for c, t in enumerate(row)]
                         for row in captions]
    caption_band = []
    for row in caption_lines:
        tallest = max(text_block_height(ls, font, LINE_SPACING) for ls in row)
        caption_band.append(CAPTION_GAP + tallest if tallest else 0)
    grid_top = margin + title_band + x_title_band + label_band
    row_top = [grid_top + sum(row_h[:r]) + sum(caption_band[:r]) + r * margin for r in range(rows)]
    height = grid_top + sum(row_h) + sum(caption_band) + rows * margin

    sheet = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(sheet)
    draw_lines(draw, title_lines, title_font, margin, margin, width - 2 * margin, TEXT_COLOR, LINE_SPACING)
    draw_lines(draw, x_title, axis_font, grid_left, margin + title_band, grid_span, TEXT_COLOR, LINE_SPACING)
    band_top = margin + title_band + x_title_band
    for c, lines in enumerate(col_lines):  # bottom-aligned, so each label sits just above its column
        top = band_top + label_content - text_block_height(lines, font, LINE_SPACING)
        draw_lines(draw, lines, font, col_left[c], top, col_w[c], TEXT_COLOR, LINE_SPACING)
    if y_title:
        top = band_top + label_content - text_block_height(y_title, axis_font, LINE_SPACING)
        draw_lines(draw, y_title, axis_font, margin, top, label_w, TEXT_COLOR, LINE_SPACING)

    for r in range(rows):
        if has_rows:
            fit = max(1, (row_h[r] + LINE_SPACING) // (line_h + LINE_SPACING))
            lines = wrap_text(row_text[r], font, label_w - 2 * TEXT_INSET, max_lines=fit)
            top = row_top[r] + (row_h[r] - text_block_height(lines, font, LINE_SPACING)) // 2
            draw_lines(draw, lines, font, margin, top, label_w, TEXT_COLOR, LINE_SPACING)
        for c in range(cols):
            left, top, image = col_left[c], row_top[r], images[r][c]
            if image is None:
                draw.rectangle((left, top, left + col_w[c] - 1, top + row_h[r] - 1), fill=MISSING_FILL)
                word = wrap_text("missing", font, text_w[c], max_lines=1)
                draw_lines(draw, word, font, left, top + (row_h[r] - line_h) // 2, col_w[c], MISSING_TEXT)
            else:
                flat = flatten_onto(image, bg)
                sheet.paste(flat, (left + (col_w[c] - flat.width) // 2, top + (row_h[r] - flat.height) // 2))
            if caption_lines[r][c]:
                draw_lines(draw, caption_lines[r][c], font, left, top + row_h[r] + CAPTION_GAP, col_w[c],
                            TEXT_COLOR, LINE_SPACING)
    return sheet


def paginate(rows: int, cols: int, cell_w: int, cell_h: int, max_side: int = 8192) -> list[tuple[int, int]]:
    """Row ranges [(start, end), ...] so that no page is taller than max_side, counting each row as 1.25 x cell_h."""
    if rows < 0 or cols < 1 or cell_w < 1 or cell_h < 1 or max_side < 1:
        raise ValueError(f"paginate needs rows >= 0 and cols, cell_w, cell_h, max_side >= 1; got rows={rows}, "
                         f"cols={cols}, cell_w={cell_w}, cell_h={cell_h}, max_side={max_side}.")
    if cols * cell_w > max_side:
        per_page = 1  # a row alone is already too wide; columns are never split, so keep pages as small as possible
    else:
        per_page = max(1, int(max_side // (cell_h * (1 + LABEL_BAND_FRACTION))))
    return [(start, min(start + per_page, rows)) for start in range(0, rows, per_page)]


# --- metadata -------------------------------------------------------------------------------------------------------

def grid_metadata(axes: dict, cells: list[dict], extra: dict | None = None) -> str:
    """JSON text (sorted keys) of the axes, the cells and extra settings, enough to reproduce the grid."""
    described = {}
    for name, axis in axes.items():
        if axis is None:
            continue
        if not isinstance(axis, Axis):
            raise ValueError(f"grid_metadata expects Axis objects in axes; {name!r} is a {type(axis).__name__}.")
        described[str(name)] = {"kind": axis.kind, "values": list(axis.values), "label": axis.label,
                                **({"value_labels": list(axis.value_labels)} if axis.value_labels else {})}
    document = {"format": METADATA_KEY, "version": METADATA_VERSION, "axes": described, "cells": list(cells),
                "extra": dict(extra or {})}
    try:
        return json.dumps(document, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"grid metadata must hold only JSON values (text, numbers, true/false, null, lists, "
                         f"dicts with text keys); {err}. Convert paths and other objects to text first.") from err


def parse_grid_metadata(text: str) -> dict:
    """The inverse of grid_metadata: {"axes": {name: Axis}, "cells": [...], "extra": {...}}."""
    try:
        document = json.loads(text)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Expected grid metadata JSON written by grid_metadata; could not read it: {err}.") from err
    if not isinstance(document, dict) or document.get("format") != METADATA_KEY:
        raise ValueError(f"Expected grid metadata with format '{METADATA_KEY}'; got "
                         f"{type(document).__name__} without it. Was this PNG made by an Atelier grid?")
    if document.get("version") != METADATA_VERSION:
        raise ValueError(f"Grid metadata version {document.get('version')!r} is not supported; this Atelier reads "
                         f"version {METADATA_VERSION}. Update Atelier.")
    axes = {name: Axis(a["kind"], tuple(a["values"]), a["label"], tuple(a.get("value_labels", ())))
            for name, a in document["axes"].items()}
    return {"axes": axes, "cells": document["cells"], "extra": document["extra"]}


def save_png_with_metadata(image: Image.Image, path, metadata_json: str) -> None:
    """Writes `image` as a PNG carrying `metadata_json` in a tEXt chunk named "atelier_grid", atomically."""
    parse_grid_metadata(metadata_json)  # refuse to store text that read_png_metadata could not read back
    info = PngInfo()
    info.add_text(METADATA_KEY, metadata_json)
    write_image(path, image, "PNG", pnginfo=info)


def read_png_metadata(path) -> dict | None:
    """The grid metadata stored in a PNG by save_png_with_metadata, or None when it carries none."""
    with Image.open(path) as image:
        text = getattr(image, "text", {}).get(METADATA_KEY)
    return None if text is None else parse_grid_metadata(text)


# --- assembling cells and pages -------------------------------------------------------------------------------------

def join_row(images: list[Image.Image], gap: int = 4, background=(255, 255, 255)) -> Image.Image:
    """Images side by side (top-aligned, `gap` pixels apart): the N seeds of one grid cell."""
    if not images:
        raise ValueError("join_row needs at least one image.")
    if len(images) == 1:
        return images[0]
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    strip = Image.new("RGB", (width, max(im.height for im in images)), as_rgb(background))
    left = 0
    for im in images:
        strip.paste(flatten_onto(im, as_rgb(background)), (left, 0))
        left += im.width + gap
    return strip


def pad_to_common_size(images: list[Image.Image], background=(255, 255, 255)) -> list[Image.Image]:
    """Each image on a canvas as large as the largest (top-left aligned), so pages of different sizes can form
    one IMAGE batch."""
    width, height = max(im.width for im in images), max(im.height for im in images)
    out = []
    for im in images:
        if im.size == (width, height):
            out.append(im)
            continue
        canvas = Image.new("RGB", (width, height), as_rgb(background))
        canvas.paste(flatten_onto(im, as_rgb(background)), (0, 0))
        out.append(canvas)
    return out
