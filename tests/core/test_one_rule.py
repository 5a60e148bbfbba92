"""One rule per thing, wherever it is used: tag splitting (escaped commas), 8-bit quantisation, token-length tiling,
file labels, the dropdown "(none)" and subset roles, and the atomic image writer."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atelier.core import captions as cap
from atelier.core.caption_text import count_tags
from atelier.core.conditioning import tile_tokens
from atelier.core.draw import image_tensor_to_pil, to_8bit
from atelier.core.grid import Axis, model_label
from atelier.core.images import write_image
from atelier.core.paths import base_name
from atelier.trainers.loop import TrainConfig, process_caption

ROOT = Path(__file__).resolve().parents[2]
CAPTION = r"keep me, a\, b, c, d\, e, f"
TAGS = ["keep me", r"a\, b", "c", r"d\, e", "f"]


def test_escaped_commas_stay_inside_a_tag_in_every_caption_path():
    assert cap.split_tags(CAPTION) == TAGS
    assert count_tags(CAPTION) == len(TAGS)
    assert cap.parse_tag_list(CAPTION + "\ng") == TAGS + ["g"]  # tags typed in a widget
    assert dict(cap.tag_frequencies([CAPTION]))[r"a\, b"] == 1
    assert cap.join_tags(cap.split_tags(CAPTION)) == CAPTION


@pytest.mark.parametrize("options", [dict(caption_shuffle=True, keep_tokens=1), dict(tag_dropout=0.3),
                                     dict(caption_shuffle=True, keep_tokens=2, tag_dropout=0.2)])
def test_training_caption_options_keep_escaped_commas(options):
    cfg = TrainConfig(**options)
    seen = set()
    for seed in range(40):
        out = process_caption(CAPTION, torch.Generator().manual_seed(seed), cfg)
        tags = cap.split_tags(out)
        assert set(tags) <= set(TAGS), out  # never 'a\' and 'b' as two tags
        assert tags[:cfg.keep_tokens] == TAGS[:cfg.keep_tokens]
        seen.add(out)
    assert len(seen) > 1  # the option really changed captions


def test_one_quantisation_is_stock_save_images():
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 5, 7, 3, generator=g) * 1.2 - 0.1  # out of range too
    pixels[0, 0, 0] = torch.tensor([0.5, 1.0 / 255.0, 254.5 / 255.0])
    stock = np.clip(255. * pixels.numpy(), 0, 255).astype(np.uint8)  # ComfyUI SaveImage, nodes.py
    assert np.array_equal(to_8bit(pixels), stock)
    assert np.array_equal(np.stack([np.asarray(im) for im in image_tensor_to_pil(pixels)]), stock)
    assert tuple(to_8bit(pixels)[0, 0, 0]) == (127, 1, 254)  # truncated, not rounded
    loaded = torch.arange(256, dtype=torch.float32).reshape(1, 16, 16, 1).expand(1, 16, 16, 3) / 255.0
    assert np.array_equal(to_8bit(loaded)[0, :, :, 0].flatten(), np.arange(256))  # LoadImage levels round-trip
    assert tuple(to_8bit(torch.tensor([float("nan"), float("inf"), -float("inf")]))) == (0, 255, 0)


def test_nodes_quantise_only_through_to_8bit():
    # one conversion of 0..1 floats to 8 bits: grid cells, training previews and IMAGE -> PIL all use core.draw
    for path in sorted((ROOT / "nodes").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"uint8|\* *255|255\.? *\*", text), f"{path.name} quantises pixels itself"


def test_token_tiling_repeats_to_the_least_common_multiple():
    a, b = torch.randn(1, 77, 4), torch.randn(2, 154, 4)
    tiled = tile_tokens([a, b])
    assert tiled.shape == (3, 154, 4) and torch.equal(tiled[0, 77:], a[0]) and torch.equal(tiled[1:], b)
    assert tile_tokens([torch.randn(1, 77, 4), torch.randn(1, 78, 4)], max_growth=4) is None  # lcm 6006: too long


def test_file_and_model_labels():
    assert base_name(r"sub\dir\a.png") == base_name("sub/dir/a.png") == base_name("/srv/x/a.png") == "a.png"
    assert model_label(r"styles\ink.safetensors") == model_label("styles/ink.SAFETENSORS") == "ink"
    assert model_label("v1.ckpt") == "v1" and model_label("notes.txt") == "notes.txt"
    assert Axis("checkpoint", ("a/b/model.safetensors",)).labels() == ["model"]
    assert cap.CaptionFilter(filename_glob="a*").matches(r"C:\data\ab.png", [])


def test_shared_constants_have_one_definition():
    for constant, pattern in (('"(none)"', r'"\(none\)"'), ("ROLES", r"^ROLES\s*=")):
        homes = [str(p.relative_to(ROOT)) for d in ("core", "trainers", "nodes") for p in (ROOT / d).rglob("*.py")
                 if re.search(pattern, p.read_text(encoding="utf-8"), re.MULTILINE)]
        assert len(homes) == 1, f"{constant} is defined in {homes}"


def test_write_image_is_atomic_and_leaves_no_temp(tmp_path):
    target = tmp_path / "cell.png"
    target.write_bytes(b"old")
    write_image(target, Image.new("RGB", (4, 3), (10, 20, 30)), "PNG")
    with Image.open(target) as im:
        assert im.size == (4, 3) and im.getpixel((0, 0)) == (10, 20, 30)
    assert [p.name for p in tmp_path.iterdir()] == ["cell.png"]
    with pytest.raises(KeyError):
        write_image(target, Image.new("RGB", (4, 3)), "NOT_A_FORMAT")
    with Image.open(target) as im:  # a failed encode never touches the file
        assert im.getpixel((0, 0)) == (10, 20, 30)
