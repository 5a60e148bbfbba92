"""Comparison grids: axis syntax parses exactly, the cell plan is ordered and guarded, the sheet lays out where the
module docstring says, pages split as documented, and metadata survives a real PNG file."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from atelier.core.draw import load_font, text_block_height, wrap_text
from atelier.core.grid import (AXIS_KINDS, MIN_COLUMN_FONTS, MISSING_FILL, Axis, draw_grid, grid_metadata, join_row,
                               pad_to_common_size, paginate, parse_grid_metadata, parse_values, plan_cells,
                               read_png_metadata, row_label_width, save_png_with_metadata)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
LORAS = ["sub/epoch-10.safetensors", "sub/epoch-2.safetensors", "sub/epoch-1.safetensors", "other/style.safetensors"]


def solid(color, size=(40, 30)):
    return Image.new("RGB", size, color)


# --- parse_values: numbers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, text, expected", [
    ("strength", "0,0.5,1", [0.0, 0.5, 1.0]),
    ("steps", "1-10", list(range(1, 11))),
    ("steps", "1-10 (+2)", [1, 3, 5, 7, 9]),
    ("cfg", "1-2 (+0.25)", [1.0, 1.25, 1.5, 1.75, 2.0]),
    ("steps", "10-1 (-3)", [10, 7, 4, 1]),
    ("steps", "5-1", [5, 4, 3, 2, 1]),
    ("denoise", "0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("strength", "-1-1 (+0.5)", [-1.0, -0.5, 0.0, 0.5, 1.0]),
    ("strength", "-1--2 (-0.5)", [-1.0, -1.5, -2.0]),
    ("strength", "-0.5, 2", [-0.5, 2.0]),
    ("cfg", "0-0.3 (+0.1)", [0.0, 0.1, 0.2, 0.3]),
    ("seed", "1, 5-7, 100", [1, 5, 6, 7, 100]),
    ("seed", "0-100 [5]", [0, 25, 50, 75, 100]),
    ("seed", "18446744073709551615", [18446744073709551615]),
    ("steps", "20.0", [20]),
])
def test_numeric_syntax(kind, text, expected):
    values = parse_values(kind, text)
    assert values == expected
    assert all(type(v) is (int if kind in ("steps", "seed") else float) for v in values)


def test_float_results_are_rounded():
    assert parse_values("cfg", "0.1-0.3 (+0.1)") == [0.1, 0.2, 0.3]
    assert 0.30000000000000004 not in parse_values("cfg", "0-1 (+0.1)")
    assert parse_values("cfg", "0-1 (+0.1)")[3] == 0.3


@pytest.mark.parametrize("text", ["1.5", "1-10 (+0.5)", "1-10 [4.5]", "1-10 [3]"])
def test_int_kinds_reject_fractions(text):
    with pytest.raises(ValueError, match="steps"):
        parse_values("steps", text)


def test_int_rejection_message_says_whole_numbers():
    with pytest.raises(ValueError, match="whole numbers.*'1.5'"):
        parse_values("steps", "1.5")


@pytest.mark.parametrize("text", ["1-10 (-1)", "10-1 (+1)", "1-5 (0)", "abc", "1-2-3", "1 2"])
def test_bad_numeric_items_are_refused(text):
    with pytest.raises(ValueError, match="axis 'cfg'"):
        parse_values("cfg", text)


@pytest.mark.parametrize("kind", AXIS_KINDS)
def test_empty_axis(kind):
    for text in ("", "   \n"):
        with pytest.raises(ValueError, match=f"axis '{kind}' has no values"):
            parse_values(kind, text, choices=["a"])
    if kind not in ("prompt_sr", "negative"):  # there ',, ,' is an empty search item / a prompt of commas
        with pytest.raises(ValueError, match=f"axis '{kind}' has no values"):
            parse_values(kind, ",, ,", choices=["a"])


def test_too_many_values_is_refused_before_building_them():
    with pytest.raises(ValueError, match="1000000000 values.*limit of 1000"):
        parse_values("seed", "1-1000000000")
    with pytest.raises(ValueError, match="limit of 3"):
        parse_values("steps", "1, 2, 3, 4", max_values=3)
    with pytest.raises(ValueError, match="limit of 3"):
        parse_values("steps", "1-2, 3-4", max_values=3)
    assert parse_values("steps", "1, 2, 3", max_values=3) == [1, 2, 3]


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="Unknown axis kind 'clip_skip'.*lora, strength, cfg.*checkpoint"):
        parse_values("clip_skip", "1")


# --- parse_values: names and prompts --------------------------------------------------------------------------------

def test_samplers_are_checked_against_choices():
    choices = ["euler", "euler_ancestral", "dpmpp_2m"]
    assert parse_values("sampler", "dpmpp_2m, euler", choices=choices) == ["dpmpp_2m", "euler"]
    with pytest.raises(ValueError, match="'eulr' is not available.*euler, euler_ancestral, dpmpp_2m"):
        parse_values("sampler", "euler, eulr", choices=choices)
    with pytest.raises(ValueError, match="scheduler"):
        parse_values("scheduler", "karass", choices=["normal", "karras"])


def test_lora_star_sorts_naturally():
    assert parse_values("lora", "*", choices=LORAS) == [
        "other/style.safetensors", "sub/epoch-1.safetensors", "sub/epoch-2.safetensors", "sub/epoch-10.safetensors"]
    assert parse_values("lora", "sub/*", choices=LORAS) == [
        "sub/epoch-1.safetensors", "sub/epoch-2.safetensors", "sub/epoch-10.safetensors"]


def test_lora_glob_accepts_backslash_folders():
    windows = ["sub\\epoch-10.safetensors", "sub\\epoch-2.safetensors"]
    assert parse_values("checkpoint", "sub/*", choices=windows) == ["sub\\epoch-2.safetensors",
                                                                   "sub\\epoch-10.safetensors"]


def test_lora_names_keep_given_order_and_are_validated():
    assert parse_values("lora", "sub/epoch-10.safetensors, sub/epoch-2.safetensors", choices=LORAS) == [
        "sub/epoch-10.safetensors", "sub/epoch-2.safetensors"]
    assert parse_values("lora", "anything.safetensors") == ["anything.safetensors"]
    with pytest.raises(ValueError, match="'missing.safetensors' is not available"):
        parse_values("lora", "missing.safetensors", choices=LORAS)
    with pytest.raises(ValueError, match="matched none"):
        parse_values("lora", "nope/*", choices=LORAS)
    with pytest.raises(ValueError, match="needs a list"):
        parse_values("lora", "*")


def test_prompt_sr_first_item_is_search_and_a_replacement():
    assert parse_values("prompt_sr", "red, blue,green") == ["red", "blue", "green"]
    assert parse_values("prompt_sr", 'red, "dark blue, glossy"') == ["red", "dark blue, glossy"]
    with pytest.raises(ValueError, match="first item"):
        parse_values("prompt_sr", ", blue")


def test_negative_splits_on_bars_only():
    assert parse_values("negative", "blurry, lowres | bad hands, [cat|dog] |  jpeg") == [
        "blurry, lowres", "bad hands, [cat|dog]", "jpeg"]


# --- Axis -----------------------------------------------------------------------------------------------------------

def test_axis_labels():
    assert Axis("strength", (1.0, 0.25, -0.5, 0.3)).labels() == ["1", "0.25", "-0.5", "0.3"]
    assert Axis("steps", [20, 30]).labels() == ["20", "30"]
    assert Axis("lora", ("sub\\deep/epoch-2.safetensors", "x.ckpt", "plain")).labels() == ["epoch-2", "x", "plain"]
    assert Axis("prompt_sr", ("red", "blue")).labels() == ["red", "blue"]
    long = "word " * 100
    assert Axis("negative", (long,)).labels() == [long]


def test_axis_defaults_and_checks():
    axis = Axis("cfg", [4.0, 5.0])
    assert axis.values == (4.0, 5.0) and axis.label == "cfg"  # a list becomes a tuple; the label defaults to the kind
    cells = [[solid(RED)]]
    plain, same = draw_grid(cells, Axis("cfg", (1.0,))), draw_grid(cells, Axis("cfg", (1.0,), "cfg"))
    named = draw_grid(cells, Axis("cfg", (1.0,), "guidance"))
    assert np.array_equal(np.asarray(plain), np.asarray(same))  # the default label is the kind, drawn as such
    assert named.size != plain.size or not np.array_equal(np.asarray(named), np.asarray(plain))  # another label
    with pytest.raises(ValueError, match="Valid kinds"):
        Axis("cfgg", (1,))


# --- plan_cells -----------------------------------------------------------------------------------------------------

def test_plan_order_is_pages_rows_columns_seeds():
    x, y, z = Axis("cfg", (4.0, 6.0)), Axis("steps", (10, 20)), Axis("seed", (1, 2))
    cells = plan_cells(x, y, z)
    assert len(cells) == 8
    assert [(c["page"], c["row"], c["col"]) for c in cells] == [(p, r, c) for p in (0, 1) for r in (0, 1)
                                                                for c in (0, 1)]
    assert cells[5] == {"page": 1, "row": 0, "col": 1, "x": 6.0, "y": 10, "z": 2, "seed_index": 0,
                        "baseline": False}


def test_plan_single_axis():
    cells = plan_cells(Axis("strength", (0.5, 1.0)))
    assert [(c["x"], c["y"], c["z"], c["page"], c["row"]) for c in cells] == [(0.5, None, None, 0, 0),
                                                                             (1.0, None, None, 0, 0)]


def test_seeds_per_cell_expands_innermost():
    cells = plan_cells(Axis("cfg", (4.0, 6.0)), seeds_per_cell=3)
    assert [(c["col"], c["seed_index"]) for c in cells] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_baseline_row_and_column():
    x, y = Axis("cfg", (4.0, 6.0)), Axis("lora", ("a", "b"))
    cells = plan_cells(x, y, baseline="row")
    assert len(cells) == 6
    assert [(c["row"], c["y"], c["baseline"]) for c in cells[:3]] == [(0, None, True), (0, None, True),
                                                                      (1, "a", False)]
    assert [c["x"] for c in cells[:2]] == [4.0, 6.0]
    cells = plan_cells(Axis("strength", (0.5, 1.0)), Axis("steps", (10,)), baseline="column")
    assert [(c["col"], c["x"], c["baseline"]) for c in cells] == [(0, None, True), (1, 0.5, False), (2, 1.0, False)]


@pytest.mark.parametrize("x, y, baseline", [
    (Axis("cfg", (1.0,)), Axis("steps", (1,)), "row"),
    (Axis("cfg", (1.0,)), Axis("lora", ("a",)), "column"),
    (Axis("lora", ("a",)), None, "row"),
])
def test_baseline_needs_a_lora_or_strength_axis(x, y, baseline):
    with pytest.raises(ValueError, match="lora, strength"):
        plan_cells(x, y, baseline=baseline)


def test_plan_refuses_bad_options_and_repeated_kinds():
    with pytest.raises(ValueError, match="baseline must be one of"):
        plan_cells(Axis("cfg", (1.0,)), baseline="top")
    with pytest.raises(ValueError, match="seeds_per_cell"):
        plan_cells(Axis("cfg", (1.0,)), seeds_per_cell=0)
    with pytest.raises(ValueError, match="same setting \\(cfg\\)"):
        plan_cells(Axis("cfg", (1.0,)), Axis("cfg", (2.0,)))


def test_size_guard_refuses_10000_cells():
    big = Axis("seed", tuple(range(100)))
    with pytest.raises(ValueError, match="10000 cells.*2500 megapixels.*1024 cells and 256 megapixels"):
        plan_cells(big, Axis("steps", tuple(range(1, 101))))
    with pytest.raises(ValueError, match="40 megapixels.*limits are 1024 cells and 32 megapixels"):
        plan_cells(Axis("cfg", (1.0, 2.0)), seeds_per_cell=10, megapixels_per_cell=2.0, max_megapixels=32)
    assert len(plan_cells(Axis("seed", tuple(range(32))), Axis("steps", tuple(range(32))))) == 1024


# --- draw_grid ------------------------------------------------------------------------------------------------------

def bbox_of(sheet, color):
    """(left, top, right, bottom) exclusive of the pixels exactly equal to `color`."""
    ys, xs = np.nonzero(np.all(np.asarray(sheet) == color, axis=-1))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_width_formula_and_cell_positions():
    fs, m = 14, 10
    images = [[solid(BLUE, (60, 40)), solid(GREEN, (50, 30))],
              [solid(WHITE, (60, 50)), solid(RED, (50, 30))]]
    sheet = draw_grid(images, Axis("cfg", (4.0, 6.0)), Axis("steps", (10, 20)), font_size=fs, margin=m)
    assert sheet.mode == "RGB"
    label_w = row_label_width(fs)
    assert label_w == 120
    assert sheet.width == m + label_w + m + 60 + 50 + 2 * m
    blue, green, red = bbox_of(sheet, BLUE), bbox_of(sheet, GREEN), bbox_of(sheet, RED)
    assert blue[2] - blue[0] == 60 and blue[3] - blue[1] == 40
    assert red[2] - red[0] == 50 and red[3] - red[1] == 30
    grid_left = m + label_w + m
    assert blue[0] == grid_left and green[0] == red[0] == grid_left + 60 + m
    # row 0 is 40 tall; the 30-tall green cell is centred in it; row 1 (50 tall) starts 40 + m lower
    assert green[1] == blue[1] + 5
    assert red[1] == blue[1] + 40 + m + 10
    cx, cy = (red[0] + red[2]) // 2, (red[1] + red[3]) // 2
    assert sheet.getpixel((cx, cy)) == RED


def test_adding_a_row_adds_its_height_plus_margin():
    x = Axis("cfg", (4.0, 6.0))
    one = draw_grid([[solid(RED), solid(BLUE)]], x, y_labels=["a"], margin=7)
    two = draw_grid([[solid(RED), solid(BLUE)], [solid(RED, (40, 55)), None]], x, y_labels=["a", "b"], margin=7)
    assert two.height - one.height == 55 + 7
    assert two.width == one.width


def test_no_row_labels_means_no_label_column():
    sheet = draw_grid([[solid(RED)]], Axis("cfg", (4.0,)), font_size=10, margin=5)
    assert sheet.width == 5 + max(40, MIN_COLUMN_FONTS * 10 + 4) + 5
    assert bbox_of(sheet, RED)[0] == 5


def test_title_and_captions_add_bands():
    x = Axis("cfg", (4.0,))
    red = solid(RED, (200, 30))
    plain = draw_grid([[red]], x, margin=6)
    titled = draw_grid([[red]], x, title="My LoRA", margin=6)
    captioned = draw_grid([[red]], x, captions=[["seed 1"]], margin=6)
    font, title_font = load_font(18), load_font(24)
    assert titled.height - plain.height == text_block_height(["My LoRA"], title_font) + 6
    assert captioned.height - plain.height == 4 + text_block_height(["seed 1"], font)
    assert bbox_of(titled, RED)[1] - bbox_of(plain, RED)[1] == titled.height - plain.height


def test_long_label_stays_inside_its_column():
    fs, m = 14, 12
    long_label = ("extraordinarily long negative prompt " * 20)[:500]
    images = [[solid(RED, (90, 40)), solid(BLUE, (90, 40))]]
    sheet = draw_grid(images, Axis("negative", (long_label, "")), font_size=fs, margin=m, max_label_lines=3)
    grid_left = m
    band = np.asarray(sheet)[: bbox_of(sheet, RED)[1]]  # everything above the images
    x_title_bottom = m + text_block_height(["negative"], load_font(fs + 2)) + m
    labels = band[x_title_bottom:]
    ink = np.any(labels != WHITE, axis=-1)
    inside = ink[:, grid_left:grid_left + 90]
    assert inside.sum() > 50  # the label was drawn
    assert not ink[:, :grid_left].any() and not ink[:, grid_left + 90:].any()
    lines = wrap_text(long_label, load_font(fs), 90 - 4, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert labels.shape[0] == text_block_height(lines, load_font(fs)) + m


def test_long_row_label_stays_in_the_label_column():
    fs, m = 14, 12
    sheet = draw_grid([[solid(RED, (40, 40))]], Axis("cfg", (1.0,)), y_labels=["word " * 100], font_size=fs, margin=m)
    red = bbox_of(sheet, RED)
    row = np.asarray(sheet)[red[1] - m // 2: red[3] + m // 2, :red[0]]
    ink = np.any(row != WHITE, axis=-1)
    assert ink[:, m:m + row_label_width(fs)].any()
    assert not ink[:, :m].any() and not ink[:, m + row_label_width(fs):].any()


def test_missing_cell_is_a_grey_box_with_text():
    sheet = draw_grid([[solid(RED, (80, 60)), None]], Axis("cfg", (4.0, 6.0)), font_size=12, margin=8)
    red = bbox_of(sheet, RED)
    left = red[2] + 8
    box = np.asarray(sheet)[red[1]:red[3], left:left + 80]
    assert tuple(box[1, 1]) == MISSING_FILL and tuple(box[-2, -2]) == MISSING_FILL
    assert np.any(np.all(box != MISSING_FILL, axis=-1))  # "missing" is written on it
    assert sheet.getpixel((left - 1, red[1] + 1)) == WHITE and sheet.getpixel((left + 80, red[1] + 1)) == WHITE
    assert sheet.getpixel((left + 1, red[1] - 1)) == WHITE and sheet.getpixel((left + 1, red[3])) == WHITE


def test_mixed_sizes_are_centred_in_widest_and_tallest():
    images = [[solid(RED, (20, 10)), solid(BLUE, (30, 30))], [solid(GREEN, (60, 26)), solid(BLUE, (10, 30))]]
    sheet = draw_grid(images, Axis("cfg", (1.0, 2.0)), margin=4)
    red, green = bbox_of(sheet, RED), bbox_of(sheet, GREEN)
    assert red[0] - green[0] == (60 - 20) // 2
    row0_top = red[1] - (30 - 10) // 2
    assert green[1] == row0_top + 30 + 4 + (30 - 26) // 2
    assert sheet.width == 4 + 60 + 58 + 2 * 4  # the second column is the 3 x 18 + 2 x 2 px minimum wide


def test_rgba_cell_is_flattened_on_background_and_inputs_untouched():
    rgba = Image.new("RGBA", (30, 30), (255, 0, 0, 0))
    before = rgba.tobytes()
    sheet = draw_grid([[rgba]], Axis("cfg", (1.0,)), background=(10, 20, 30))
    assert sheet.getpixel((sheet.width - 12 - 27, sheet.height - 12 - 15)) == (10, 20, 30)
    assert rgba.tobytes() == before and rgba.mode == "RGBA"


def test_label_count_mismatch_is_explained():
    with pytest.raises(ValueError, match="2 columns.*1 labels.*x_labels"):
        draw_grid([[solid(RED), solid(RED)]], Axis("cfg", (1.0,)))
    with pytest.raises(ValueError, match="same number of cells"):
        draw_grid([[solid(RED), solid(RED)], [solid(RED)]], Axis("cfg", (1.0, 2.0)))
    with pytest.raises(ValueError, match="PIL images or None"):
        draw_grid([[np.zeros((2, 2, 3))]], Axis("cfg", (1.0,)))
    sheet = draw_grid([[solid(RED), solid(RED)]], Axis("lora", ("a",)), x_labels=["no LoRA", "a"], margin=10)
    left, _, right, _ = bbox_of(sheet, RED)
    column = max(40, MIN_COLUMN_FONTS * 18 + 4)  # the default font's minimum column; the cells are centred in it
    assert right - left == column + 10 + 40  # x_labels gave the one-value axis its two columns


# --- paginate -------------------------------------------------------------------------------------------------------

def test_paginate_by_height():
    # each row counts 100 * 1.25 = 125 px; 1000 px holds 8 rows
    assert paginate(20, 4, 100, 100, max_side=1000) == [(0, 8), (8, 16), (16, 20)]
    assert paginate(8, 4, 100, 100, max_side=1000) == [(0, 8)]
    assert paginate(3, 2, 512, 512) == [(0, 3)]
    assert paginate(0, 2, 512, 512) == []


def test_paginate_keeps_rows_whole_when_too_tall_or_too_wide():
    assert paginate(3, 2, 100, 5000, max_side=1000) == [(0, 1), (1, 2), (2, 3)]
    assert paginate(3, 20, 100, 10, max_side=1000) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="cell_h"):
        paginate(3, 2, 100, 0)


# --- metadata -------------------------------------------------------------------------------------------------------

def test_metadata_json_is_sorted_and_round_trips():
    axes = {"x": Axis("strength", (0.0, 0.5, 1.0)), "y": Axis("lora", ("sub/epoch-2.safetensors",), "epoch"),
            "z": None}
    cells = plan_cells(axes["x"], axes["y"], baseline="row")
    extra = {"sampler": "euler", "steps": 20, "cfg": 6.5, "prompt": "a café, 1girl"}
    text = grid_metadata(axes, cells, extra)
    assert text == json.dumps(json.loads(text), sort_keys=True)
    back = parse_grid_metadata(text)
    assert back == {"axes": {"x": axes["x"], "y": axes["y"]}, "cells": cells, "extra": extra}


def test_metadata_refuses_non_json_values_and_foreign_text():
    with pytest.raises(ValueError, match="JSON values"):
        grid_metadata({"x": Axis("cfg", (1.0,))}, [{"x": object()}])
    with pytest.raises(ValueError, match="JSON values"):
        grid_metadata({"x": Axis("cfg", (float("nan"),))}, [])
    with pytest.raises(ValueError, match="format 'atelier_grid'"):
        parse_grid_metadata('{"axes": {}}')
    with pytest.raises(ValueError, match="could not read"):
        parse_grid_metadata("not json")


def test_png_round_trip_is_exact_and_atomic(tmp_path):
    axes = {"x": Axis("cfg", (4.0, 6.5)), "y": Axis("prompt_sr", ("red", "blue"))}
    cells = plan_cells(axes["x"], axes["y"], seeds_per_cell=2)
    extra = {"seed": 18446744073709551615, "negative": "blurry, ñ"}
    sheet = draw_grid([[solid(RED), solid(BLUE)]] * 2, axes["x"], axes["y"])
    path = tmp_path / "grid.png"
    save_png_with_metadata(sheet, path, grid_metadata(axes, cells, extra))
    assert os.listdir(tmp_path) == ["grid.png"]
    assert read_png_metadata(path) == {"axes": axes, "cells": cells, "extra": extra}
    with Image.open(path) as reread:
        assert reread.size == sheet.size and "atelier_grid" in reread.text
        assert reread.convert("RGB").tobytes() == sheet.tobytes()
    save_png_with_metadata(sheet, path, grid_metadata(axes, cells[:1]))  # overwrite in place
    assert os.listdir(tmp_path) == ["grid.png"] and read_png_metadata(path)["cells"] == cells[:1]


def test_png_without_metadata_reads_none(tmp_path):
    path = tmp_path / "plain.png"
    solid(RED).save(path)
    assert read_png_metadata(path) is None
    with pytest.raises(ValueError):
        save_png_with_metadata(solid(RED), tmp_path / "bad.png", "{}")
    assert sorted(os.listdir(tmp_path)) == ["plain.png"]


def test_join_row_puts_seeds_side_by_side_with_gaps():
    a, b = Image.new("RGB", (10, 6), (255, 0, 0)), Image.new("RGBA", (8, 9), (0, 0, 255, 0))
    strip = join_row([a, b], gap=3, background=(0, 255, 0))
    assert strip.size == (10 + 3 + 8, 9)
    assert strip.getpixel((0, 0)) == (255, 0, 0) and strip.getpixel((11, 4)) == (0, 255, 0)  # gap shows background
    assert strip.getpixel((14, 8)) == (0, 255, 0)  # transparent pixels show the background, not hidden colour
    assert strip.getpixel((5, 8)) == (0, 255, 0)  # below the shorter image
    assert join_row([a]) is a
    with pytest.raises(ValueError, match="at least one"):
        join_row([])


def test_pad_to_common_size_keeps_pixels_top_left():
    small, big = Image.new("RGB", (4, 5), (9, 9, 9)), Image.new("RGB", (7, 3), (1, 2, 3))
    out = pad_to_common_size([small, big], background=(255, 255, 255))
    assert [im.size for im in out] == [(7, 5), (7, 5)]
    assert out[0].getpixel((3, 4)) == (9, 9, 9) and out[0].getpixel((6, 0)) == (255, 255, 255)
    assert out[1].getpixel((6, 2)) == (1, 2, 3) and out[1].getpixel((0, 4)) == (255, 255, 255)


@pytest.mark.parametrize("kind, text, shown", [("strength", "0, 1e30", "1e+30"), ("strength", "-11", "-11"),
                                               ("cfg", "1-40 (+10)", "31"), ("steps", "1000000", "1000000"),
                                               ("steps", "0", "0"), ("denoise", "0-2 [3]", "2"),
                                               ("seed", "-1", "-1")])
def test_numeric_axes_stay_within_their_node_input_range(kind, text, shown):
    with pytest.raises(ValueError, match=f"axis '{kind}': {re.escape(shown)} is outside"):
        parse_values(kind, text)
