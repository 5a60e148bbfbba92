"""Drawing: wrapped text stays inside its width, sheets and charts lay out exactly, IMAGE tensors round-trip."""

import numpy as np
import pytest
import torch
from PIL import Image

from atelier.core.draw import (bar_chart, contact_sheet, image_tensor_to_pil, load_font, pil_to_image_tensor,
                               text_block_height, wrap_text)

WORDS = ("tag", "a", "portrait", "of", "someone", "standing", "in", "rain,", "looking_at_viewer", "1girl",
         "extraordinarily", "x")
LONG_LABEL = " ".join(WORDS[i % len(WORDS)] for i in range(80))[:500]
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


@pytest.fixture(scope="module")
def font():
    return load_font(14)


def solid(color, size=(40, 20)):
    return Image.new("RGB", size, color)


# --- fonts and wrapping ---------------------------------------------------------------------------------------------

def test_load_font_is_cached_per_size():
    assert load_font(14) is load_font(14)
    assert load_font(14) is not load_font(20)
    assert load_font(20).getlength("MMMM") > load_font(10).getlength("MMMM")  # the size is honoured


@pytest.mark.parametrize("max_width", [40, 90, 150, 300])
def test_wrap_every_line_fits_and_keeps_all_text(font, max_width):
    lines = wrap_text(LONG_LABEL, font, max_width)
    assert len(lines) > 1
    assert all(font.getlength(line) <= max_width for line in lines)
    # Nothing lost or invented: only the spaces at the breaks disappear.
    assert "".join(lines).replace(" ", "") == LONG_LABEL.replace(" ", "")


def test_wrap_is_greedy(font):
    lines = wrap_text(LONG_LABEL, font, 150)
    for line, following in zip(lines, lines[1:]):
        next_word = following.split(" ")[0]
        assert font.getlength(f"{line} {next_word}") > 150, "a line could have taken the next word"


def test_wrap_breaks_a_word_without_spaces(font):
    word = "abcdefghij" * 6
    lines = wrap_text(word, font, 80)
    assert len(lines) > 1
    assert "".join(lines) == word
    assert all(font.getlength(line) <= 80 for line in lines)


def test_wrap_max_lines_ends_with_ellipsis(font):
    lines = wrap_text(LONG_LABEL, font, 120, max_lines=3)
    assert len(lines) == 3
    assert lines[-1].endswith("…")
    assert all(font.getlength(line) <= 120 for line in lines)
    assert wrap_text("short", font, 120, max_lines=3) == ["short"]  # no ellipsis when nothing is cut


def test_wrap_respects_newlines(font):
    assert wrap_text("first line\nsecond", font, 400) == ["first line", "second"]
    assert wrap_text("a\r\n\nb", font, 400) == ["a", "", "b"]


def test_wrap_empty(font):
    assert wrap_text("", font, 100) == []
    assert wrap_text("  \n ", font, 100) == []


def test_wrap_refuses_impossible_widths(font):
    with pytest.raises(ValueError, match="wide"):
        wrap_text("W", font, 2)
    with pytest.raises(ValueError, match="max_width"):
        wrap_text("text", font, 0)


def test_text_block_height_grows_by_line_plus_spacing(font):
    one, two, three = (text_block_height(["x"] * n, font, line_spacing=5) for n in (1, 2, 3))
    assert text_block_height([], font) == 0
    assert one > 0 and three - two == two - one == one + 5


# --- contact sheet --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("count, columns, used", [(1, 4, 1), (3, 4, 3), (4, 4, 4), (7, 3, 3)])
def test_contact_sheet_width_formula(count, columns, used):
    sheet = contact_sheet([solid(RED)] * count, [""] * count, columns=columns, cell=32, margin=5)
    assert sheet.mode == "RGB"
    assert sheet.width == 5 + used * (32 + 5)


def test_contact_sheet_rows_have_equal_height():
    heights = [contact_sheet([solid(RED)] * n, ["label"] * n, columns=2, cell=32).height for n in (2, 4, 6)]
    assert heights[1] - heights[0] == heights[2] - heights[1] > 32


def test_contact_sheet_places_thumbnail_in_its_cell():
    cell, margin, columns = 48, 6, 3
    images = [solid(BLUE) for _ in range(5)]
    images[4] = solid(RED, (90, 30))  # index 4 with 3 columns is row 1, column 1
    sheet = contact_sheet(images, ["x"] * 5, columns=columns, cell=cell, margin=margin)
    row_height = (sheet.height - margin) // 2
    for i in range(5):
        row, col = divmod(i, columns)
        centre = (margin + col * (cell + margin) + cell // 2, margin + row * row_height + cell // 2)
        assert sheet.getpixel(centre) == (RED if i == 4 else BLUE)


def test_contact_sheet_draws_labels_in_the_label_band():
    cell, margin = 64, 8
    sheet = contact_sheet([solid(RED), solid(RED)], ["a caption here", ""], columns=2, cell=cell, margin=margin)
    band = np.asarray(sheet)[margin + cell + 1:sheet.height - margin]
    first = band[:, margin:margin + cell]
    second = band[:, 2 * margin + cell:2 * margin + 2 * cell]
    assert (first != 255).any(), "the label was not drawn"
    assert (second == 255).all(), "an empty label drew something"


def test_contact_sheet_title_adds_height_and_shifts_cells():
    plain = contact_sheet([solid(RED)], ["x"], cell=40)
    titled = contact_sheet([solid(RED)], ["x"], cell=40, title="Run 3: epoch 10 samples")
    extra = titled.height - plain.height
    assert extra > 0
    assert np.array_equal(np.asarray(titled)[extra:], np.asarray(plain))  # the grid itself just moved down


def test_contact_sheet_flattens_transparency_onto_background_without_touching_input():
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    sheet = contact_sheet([rgba], [""], cell=20, margin=4, background=(0, 128, 0))
    assert sheet.getpixel((14, 14)) == (0, 128, 0)
    assert rgba.mode == "RGBA" and rgba.getpixel((0, 0)) == (255, 0, 0, 0)


@pytest.mark.parametrize("images, labels, kwargs, words", [
    ([solid(RED)], ["a", "b"], {}, "one label per image"),
    ([], [], {}, "nothing to draw"),
    ([solid(RED)], ["a"], {"columns": 0}, "columns"),
    (["not an image"], ["a"], {}, "PIL images"),
])
def test_contact_sheet_bad_inputs(images, labels, kwargs, words):
    with pytest.raises(ValueError, match=words):
        contact_sheet(images, labels, **kwargs)


# --- bar chart ------------------------------------------------------------------------------------------------------

def bar_lengths(chart, color):
    """Longest run of exactly `color` pixels in each horizontal band of rows that contains it."""
    hit = np.all(np.asarray(chart) == color, axis=-1)
    rows = np.flatnonzero(hit.any(axis=1))
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if len(rows) else []
    return [int(hit[band[len(band) // 2]].sum()) for band in bands]


def test_bar_chart_lengths_are_proportional():
    color = (70, 110, 200)
    chart = bar_chart([("one", 1), ("two", 2), ("four", 4)], title="samples", color=color)
    one, two, four = bar_lengths(chart, color)
    assert abs(two - 2 * one) <= 1 and abs(four - 4 * one) <= 2
    assert four > chart.width // 3  # the largest value fills the bar area


def test_bar_chart_height_grows_with_rows():
    rows = [(f"row {i}", float(i + 1)) for i in range(6)]
    three, six = bar_chart(rows[:3]), bar_chart(rows)
    assert six.width == three.width == 640
    assert six.height > three.height
    assert len(bar_lengths(six, (70, 110, 200))) == 6


def test_bar_chart_long_labels_stay_in_their_column():
    color = (70, 110, 200)
    chart = bar_chart([("a very long subset name " * 10, 3), ("b", 3)], color=color)
    short = bar_chart([("a", 3), ("b", 3)], color=color)
    assert bar_lengths(chart, color) == bar_lengths(short, color)  # a long label does not shorten its bar
    assert len(bar_lengths(short, color)) == 2 and bar_lengths(short, color)[0] > chart.width // 3


def test_bar_chart_empty_and_zero():
    empty = bar_chart([])
    assert empty.size[0] == 640 and (np.asarray(empty) < 128).any()  # "no data" is written
    zeros = bar_chart([("a", 0), ("b", 0)])
    assert bar_lengths(zeros, (70, 110, 200)) == []


def test_bar_chart_refuses_negative_values():
    with pytest.raises(ValueError, match=">= 0"):
        bar_chart([("loss delta", -1.0)])


# --- IMAGE tensors --------------------------------------------------------------------------------------------------

def test_pil_tensor_round_trip_is_exact():
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, size=(3, 5, 7, 3), dtype=np.uint8)
    images = [Image.fromarray(a) for a in arrays]
    batch = pil_to_image_tensor(images)
    assert batch.shape == (3, 5, 7, 3) and batch.dtype == torch.float32 and batch.device.type == "cpu"
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    back = image_tensor_to_pil(batch)
    assert all(im.mode == "RGB" and im.size == (7, 5) for im in back)
    assert np.array_equal(np.stack([np.asarray(im) for im in back]), arrays)


def test_pil_to_tensor_refuses_mixed_sizes():
    with pytest.raises(ValueError, match=r"40x20.*8x8"):
        pil_to_image_tensor([solid(RED), solid(RED, (8, 8))])
    with pytest.raises(ValueError, match="no images"):
        pil_to_image_tensor([])


def test_tensor_to_pil_channels_and_clamping():
    grey = torch.full((1, 2, 2, 1), 0.5)
    assert image_tensor_to_pil(grey)[0].getpixel((0, 0)) == (127, 127, 127)  # 127.5 truncated, as SaveImage does
    rgba = torch.tensor([0.0, 1.0, 0.2, 0.0]).expand(1, 3, 3, 4)
    assert image_tensor_to_pil(rgba)[0].getpixel((1, 1)) == (0, 255, 51)
    wild = torch.tensor([[[[2.0, -1.0, 0.5]]]])
    before = wild.clone()
    assert image_tensor_to_pil(wild)[0].getpixel((0, 0)) == (255, 0, 127)
    assert torch.equal(wild, before)  # clamping made a copy


def test_tensor_to_pil_refuses_bad_shapes():
    with pytest.raises(ValueError, match="unsqueeze"):
        image_tensor_to_pil(torch.zeros(4, 4, 3))
    with pytest.raises(ValueError, match="C in 1, 3 or 4"):
        image_tensor_to_pil(torch.zeros(1, 4, 4, 2))
