"""core.images on tiny real image files: safe decoding, mode conversion, and the geometry of preparation."""

import math
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from atelier.core.images import (ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, FILTERS, PREP_MODES, ImageRejected,
                                 probe_image,
                                 center_crop, choose_bucket, crop_box_for_aspect, fit_bucket, flip_horizontal,
                                 letterbox, make_buckets, no_upscale_bucket, open_image, parse_color, prepare_image,
                                 resize, target_size, to_rgb)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def pixels(img):
    """The image as an (H, W, C) uint8 array."""
    return np.asarray(img)


def noise(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def png_with_header_size(path, width, height):
    """A real 8×8 PNG whose IHDR then claims width × height (CRC fixed), so it is huge only on paper."""
    Image.new("1", (8, 8)).save(path, "PNG")
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------- ImageRejected


def test_image_rejected_keeps_path_and_reason_and_pickles():
    e = ImageRejected("a/b.png", "too small")
    assert str(e) == "a/b.png: too small"
    assert (e.path, e.reason) == ("a/b.png", "too small")
    assert isinstance(e, ValueError)
    back = pickle.loads(pickle.dumps(e))
    assert (back.path, back.reason, str(back)) == ("a/b.png", "too small", "a/b.png: too small")


# ---------------------------------------------------------------- open_image


@pytest.mark.parametrize("fmt, name", [("PNG", "a.png"), ("JPEG", "a.jpg"), ("WEBP", "a.webp"), ("BMP", "a.bmp"),
                                       ("BMP", "bmp_named.png"), ("PNG", "png_named.jpg")])
def test_open_image_allowed_formats_by_content(tmp_path, fmt, name):
    src = Image.new("RGB", (6, 4), (10, 200, 30))
    path = tmp_path / name
    src.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    img = open_image(path)
    path.unlink()  # pixels must already be in memory
    assert img.size == (6, 4)
    got = pixels(img.convert("RGB"))[2, 3]
    assert np.abs(got.astype(int) - (10, 200, 30)).max() <= (8 if fmt == "JPEG" else 0)


def test_open_image_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageRejected, match="file not found") as info:
        open_image(path)
    assert info.value.path == path
    assert str(path) in str(info.value)


def test_open_image_folder(tmp_path):
    with pytest.raises(ImageRejected, match="folder"):
        open_image(tmp_path)


def test_open_image_random_bytes(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageRejected, match="PNG, JPEG, WEBP, BMP") as info:
        open_image(path)
    assert str(path) in str(info.value)


def _psd_header():
    """A minimal Photoshop header (signature 8BPS, 3 channels, 4×4, 8-bit RGB) with empty sections."""
    head = b"8BPS" + struct.pack(">H6sHIIHH", 1, b"\0" * 6, 3, 4, 4, 8, 3)
    return head + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(48)


@pytest.mark.parametrize("real", ["TIFF", "PPM", "EPS", "PSD"])
def test_open_image_refuses_other_formats_named_png(tmp_path, real):
    path = tmp_path / "looks_fine.png"
    if real == "PSD":
        path.write_bytes(_psd_header())  # Pillow reads PSD but cannot write it
    else:
        Image.new("RGB", (4, 4), RED).save(path, real)
    with pytest.raises(ImageRejected) as info:
        open_image(path)
    message = str(info.value)
    assert f"content is {real}" in message
    assert ", ".join(ALLOWED_FORMATS) in message
    assert message.startswith(str(path))


@pytest.mark.parametrize("fmt, ext", [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("WEBP", "webp")])
def test_open_image_truncated(tmp_path, fmt, ext):
    full = tmp_path / f"full.{ext}"
    noise(64, 64).save(full, fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    assert open_image(full).size == (64, 64)
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        open_image(cut)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_open_image_refuses_huge_header_before_decoding(tmp_path):
    limit_before = Image.MAX_IMAGE_PIXELS
    bomb = png_with_header_size(tmp_path / "bomb.png", 30000, 30000)  # over Pillow's own hard limit
    warn = png_with_header_size(tmp_path / "warn.png", 10000, 9000)  # in Pillow's warning band, over ours
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning escaping would fail the test here
        with pytest.raises(ImageRejected) as big:
            open_image(bomb)
        with pytest.raises(ImageRejected) as mid:
            open_image(warn)
    # refused from the header alone: a decode would have found no pixel data and said "truncated" (checked below)
    assert "900,000,000 pixels" in str(big.value) and f"{DEFAULT_MAX_PIXELS:,}" in str(big.value)
    assert "10000×9000 = 90,000,000 pixels" in str(mid.value) and "80,000,000" in str(mid.value)
    assert "truncated" not in str(big.value) + str(mid.value)
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_open_image_honours_max_pixels(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (100, 100), RED).save(path)
    with pytest.raises(ImageRejected, match="100×100 = 10,000 pixels, over the limit of 9,999"):
        open_image(path, max_pixels=9_999)
    assert open_image(path, max_pixels=10_000).size == (100, 100)


def test_open_image_refuses_zero_size(tmp_path):
    with pytest.raises(ImageRejected):
        open_image(png_with_header_size(tmp_path / "empty.png", 0, 5))


@pytest.mark.parametrize("orientation, red_corner", [(6, "top_right"), (8, "bottom_left"), (1, "top_left")])
def test_open_image_applies_exif_orientation(tmp_path, orientation, red_corner):
    stored = Image.new("RGB", (40, 20), BLUE)
    stored.paste(RED, (0, 0, 10, 10))  # red block in the stored top-left corner
    exif = stored.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", quality=95, exif=exif)
    img = open_image(path)
    w, h = img.size
    assert (w, h) == ((40, 20) if orientation == 1 else (20, 40))
    corners = {"top_left": (2, 2), "top_right": (w - 3, 2), "bottom_left": (2, h - 3), "bottom_right": (w - 3, h - 3)}
    for name, xy in corners.items():
        want = RED if name == red_corner else BLUE
        assert np.abs(np.array(img.getpixel(xy)) - want).max() < 40, (name, img.getpixel(xy))


@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 7, 8])
def test_probe_image_reports_upright_size_from_header(tmp_path, orientation):
    stored = Image.new("RGB", (40, 20), BLUE)
    exif = stored.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", exif=exif)
    assert probe_image(path) == open_image(path).size == ((20, 40) if orientation >= 5 else (40, 20))


def test_probe_image_applies_the_same_header_checks(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "t.png", format="TIFF")
    with pytest.raises(ImageRejected, match="TIFF"):
        probe_image(tmp_path / "t.png")
    with pytest.raises(ImageRejected, match="over the limit"):
        probe_image(png_with_header_size(tmp_path / "big.png", 30000, 30000))


def test_mpo_camera_jpeg_is_read_as_its_first_frame(tmp_path):
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (16, 12), RED).save(path, "MPO", save_all=True, append_images=[Image.new("RGB", (16, 12), BLUE)])
    assert Image.open(path).format == "MPO"
    img = open_image(path)
    assert img.size == (16, 12) and np.abs(np.array(img.getpixel((8, 6))) - RED).max() < 40


# ---------------------------------------------------------------- to_rgb


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 257, 32768, 65535]], dtype=np.uint16)).save(path)
    img = open_image(path)
    assert img.mode == "I;16"
    rgb, alpha = to_rgb(img)
    assert alpha is None and rgb.mode == "RGB"
    assert pixels(rgb)[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (pixels(rgb)[0, :, 0] == pixels(rgb)[0, :, 2]).all()


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I"])
def test_wide_integer_modes_scale_from_16_bit(mode):
    img = Image.new(mode, (3, 1))
    for x, v in enumerate([65535, 32768, 0]):
        img.putpixel((x, 0), v)
    rgb, alpha = to_rgb(img)
    assert alpha is None
    assert pixels(rgb)[0, :, 1].tolist() == [255, 128, 0]


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    src = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # red
    src.paste((255, 0, 255, 0), (8, 0, 16, 8))  # green
    path = tmp_path / "print.jpg"
    src.save(path, "JPEG", quality=95)
    img = open_image(path)
    assert img.mode == "CMYK"
    rgb, alpha = to_rgb(img)
    assert alpha is None
    assert np.abs(pixels(rgb)[4, 2].astype(int) - RED).max() <= 10
    assert np.abs(pixels(rgb)[4, 13].astype(int) - GREEN).max() <= 10


def test_palette_png_with_trns(tmp_path):
    src = Image.new("P", (4, 2), 0)
    src.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 red, index 1 green
    src.paste(1, (2, 0, 4, 2))  # right half uses index 1, which becomes transparent
    path = tmp_path / "sprite.png"
    src.save(path, transparency=1)
    img = open_image(path)
    assert img.mode == "P" and "transparency" in img.info
    on_white, alpha = to_rgb(img, (255, 255, 255))
    on_black, _ = to_rgb(img, (0, 0, 0))
    assert alpha.dtype == np.uint8 and alpha.shape == (2, 4)
    assert alpha.tolist() == [[255, 255, 0, 0]] * 2
    assert pixels(on_white)[:, 2:].tolist() == [[[255, 255, 255]] * 2] * 2
    assert pixels(on_black)[:, 2:].tolist() == [[[0, 0, 0]] * 2] * 2
    assert pixels(on_white)[:, :2].tolist() == [[list(RED)] * 2] * 2


def test_palette_without_transparency_has_no_alpha():
    img = Image.new("RGB", (2, 2), GREEN).convert("P")
    rgb, alpha = to_rgb(img)
    assert alpha is None and pixels(rgb)[1, 1].tolist() == list(GREEN)


def test_rgba_half_alpha_composite_is_exact():
    img = Image.new("RGBA", (1, 1), (201, 101, 0, 128))
    on_white, alpha = to_rgb(img)
    on_black, _ = to_rgb(img, (0, 0, 0))
    # out = rgb*a + bg*(1-a), a = 128/255: 201*128/255 + 255*127/255 = 227.89 -> 228 (rounded, not truncated)
    assert pixels(on_white)[0, 0].tolist() == [228, 178, 127]
    assert pixels(on_black)[0, 0].tolist() == [101, 51, 0]  # 100.89 -> 101, 50.70 -> 51
    assert alpha.tolist() == [[128]] and alpha.dtype == np.uint8
    assert img.mode == "RGBA" and img.getpixel((0, 0)) == (201, 101, 0, 128)  # input untouched


def test_rgb_has_no_alpha_and_is_a_copy():
    img = Image.new("RGB", (2, 2), BLUE)
    rgb, alpha = to_rgb(img)
    assert alpha is None and rgb is not img
    assert pixels(rgb).tolist() == pixels(img).tolist()


@pytest.mark.parametrize("mode, value, bg, want, has_alpha", [
    ("1", 1, (0, 0, 0), (255, 255, 255), False),
    ("L", 77, (0, 0, 0), (77, 77, 77), False),
    ("LA", (100, 0), (10, 20, 30), (10, 20, 30), True),
    ("LA", (100, 255), (10, 20, 30), (100, 100, 100), True),
    ("La", (50, 128), (255, 255, 255), (177, 177, 177), True),  # premultiplied: 50 + 255*127/255
    ("RGBa", (100, 50, 0, 128), (255, 255, 255), (227, 177, 127), True),
    ("F", 100.4, (0, 0, 0), (100, 100, 100), False),
    ("F", 300.0, (0, 0, 0), (255, 255, 255), False),
    ("YCbCr", (76, 85, 255), (0, 0, 0), (254, 0, 0), False),  # red, approximately
])
def test_to_rgb_modes(mode, value, bg, want, has_alpha):
    rgb, alpha = to_rgb(Image.new(mode, (2, 1), value), bg)
    assert rgb.mode == "RGB" and rgb.size == (2, 1)
    assert np.abs(pixels(rgb)[0, 1].astype(int) - want).max() <= (1 if mode == "YCbCr" else 0)
    assert (alpha is not None) == has_alpha


def test_to_rgb_pa_mode():
    img = Image.new("RGBA", (2, 1), (0, 0, 255, 255)).convert("PA")
    img.putpixel((1, 0), (img.getpixel((0, 0))[0], 0))
    rgb, alpha = to_rgb(img, (255, 255, 0))
    assert alpha.tolist() == [[255, 0]]
    assert pixels(rgb)[0].tolist() == [list(BLUE), [255, 255, 0]]


def test_to_rgb_grey_colour_key(tmp_path):
    path = tmp_path / "keyed.png"
    Image.fromarray(np.array([[10, 200]], dtype=np.uint8), "L").save(path, transparency=200)
    rgb, alpha = to_rgb(open_image(path), (0, 0, 255))
    assert alpha.tolist() == [[255, 0]]
    assert pixels(rgb)[0].tolist() == [[10, 10, 10], list(BLUE)]


def test_to_rgb_refuses_lab_and_bad_background():
    with pytest.raises(ValueError, match="LAB"):
        to_rgb(Image.new("LAB", (1, 1)))
    with pytest.raises(ValueError, match="background must be an"):
        to_rgb(Image.new("RGBA", (1, 1)), (300, 0, 0))


# ---------------------------------------------------------------- parse_color


@pytest.mark.parametrize("text, want", [
    ("white", (255, 255, 255)), (" Black ", (0, 0, 0)), ("gray", (128, 128, 128)), ("GREY", (128, 128, 128)),
    ("#ff8000", (255, 128, 0)), ("#F80", (255, 136, 0)), ("12, 34,56", (12, 34, 56)), ("0,0,255", (0, 0, 255)),
])
def test_parse_color_accepts(text, want):
    assert parse_color(text) == want


@pytest.mark.parametrize("bad", ["purple", "#12345", "#ggg", "1,2", "1,2,256", "-1,0,0", "", "1.5,2,3", None])
def test_parse_color_refuses_with_the_accepted_forms(bad):
    with pytest.raises(ValueError) as info:
        parse_color(bad)
    message = str(info.value)
    for form in ("'white'", "'black'", "'#rrggbb'", "'#rgb'", "'r,g,b'"):
        assert form in message


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize("size, target, box", [
    ((100, 50), (1, 1), (25, 0, 75, 50)),
    ((50, 100), (1, 1), (0, 25, 50, 75)),
    ((100, 100), (2, 1), (0, 25, 100, 75)),
    ((101, 50), (512, 512), (25, 0, 75, 50)),
    ((640, 480), (4, 3), (0, 0, 640, 480)),
    ((1, 1), (512, 256), (0, 0, 1, 1)),
    ((30, 1), (1, 1), (14, 0, 15, 1)),
])
def test_crop_box_for_aspect_exact(size, target, box):
    assert crop_box_for_aspect(*size, *target) == box


def test_crop_box_refuses_bad_sizes():
    with pytest.raises(ValueError, match="positive integers"):
        crop_box_for_aspect(0, 10, 1, 1)
    with pytest.raises(ValueError, match="positive integers"):
        crop_box_for_aspect(10, 10, 1.5, 1)


def _thirds(width=90, height=30):
    img = Image.new("RGB", (width, height), RED)
    img.paste(GREEN, (width // 3, 0, 2 * width // 3, height))
    img.paste(BLUE, (2 * width // 3, 0, width, height))
    return img


@pytest.mark.parametrize("filter", FILTERS)
def test_center_crop_keeps_the_centre(filter):
    out = center_crop(_thirds(), 30, 30, filter)
    assert out.size == (30, 30)
    assert (pixels(out) == GREEN).all()


def test_center_crop_resizes_to_target():
    out = center_crop(_thirds(), 10, 10, "nearest")
    assert out.size == (10, 10) and (pixels(out) == GREEN).all()


def test_letterbox_pads_rows_with_exact_colour():
    pad = (10, 20, 30)
    out = letterbox(Image.new("RGB", (40, 20), GREEN), 32, 32, pad, "nearest")
    arr = pixels(out)  # content 32×16 at rows 8..23
    assert out.size == (32, 32)
    assert (arr[:8] == pad).all() and (arr[24:] == pad).all()
    assert (arr[8:24] == GREEN).all()


def test_letterbox_pads_columns_with_exact_colour():
    pad = (255, 255, 0)
    out = letterbox(Image.new("RGB", (10, 40), RED), 20, 20, pad)
    arr = pixels(out)  # content 5×20 at columns 7..11
    assert (arr[:, :7] == pad).all() and (arr[:, 12:] == pad).all()
    assert (arr[:, 7:12] == RED).all()


def test_letterbox_needs_rgb():
    with pytest.raises(ValueError, match="to_rgb"):
        letterbox(Image.new("RGBA", (4, 4)), 8, 8)


def test_resize_lanczos_reduces_by_the_whole_factor_first():
    # Columns 0, 100, 200, 50: halving by box-average gives exactly 50 and 125; plain LANCZOS would ring.
    img = Image.fromarray(np.array([[0, 100, 200, 50]] * 2, dtype=np.uint8), "L")
    assert pixels(resize(img, 2, 1, "lanczos")).tolist() == [[50, 125]]
    assert pixels(resize(img, 2, 1, "area")).tolist() == [[50, 125]]
    assert pixels(resize(img, 2, 1, "nearest")).tolist()[0][0] in (0, 100)


def test_resize_exact_size_and_copy():
    img = noise(101, 37)
    assert resize(img, 10, 9).size == (10, 9)
    assert resize(img, 300, 50, "bicubic").size == (300, 50)
    same = resize(img, 101, 37)
    assert same is not img and pixels(same).tolist() == pixels(img).tolist()
    flat = Image.new("RGB", (997, 401), (12, 34, 56))
    assert (pixels(resize(flat, 31, 7)) == (12, 34, 56)).all()


def test_resize_refuses_unknown_filter():
    with pytest.raises(ValueError, match="lanczos, area, bicubic, bilinear, nearest"):
        resize(Image.new("RGB", (4, 4)), 2, 2, "cubic")


def test_flip_horizontal_exact():
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # (H, W, 3), every pixel distinct
    img = Image.fromarray(arr, "RGB")
    flipped = flip_horizontal(img)
    assert pixels(flipped).tolist() == arr[:, ::-1].tolist()
    assert pixels(img).tolist() == arr.tolist()


# ---------------------------------------------------------------- buckets


@pytest.mark.parametrize("resolution, step", [(512, 64), ((768, 512), 64), (1024, 32), (500, 64)])
def test_make_buckets_invariants(resolution, step):
    buckets = make_buckets(resolution, step=step)
    max_area = resolution * resolution if isinstance(resolution, int) else resolution[0] * resolution[1]
    longest = resolution if isinstance(resolution, int) else max(resolution)
    assert buckets == sorted(set(buckets))
    for w, h in buckets:
        assert w % step == 0 and h % step == 0
        assert w * h <= max_area
        assert 256 <= w <= 2 * longest and 256 <= h <= 2 * longest
        assert (h, w) in buckets
    square = math.isqrt(max_area) // step * step
    assert (square, square) in buckets


def test_make_buckets_known_members():
    buckets = make_buckets(512)
    assert (512, 512) in buckets and (1024, 256) in buckets and (256, 1024) in buckets and (576, 448) in buckets
    assert (768, 512) in make_buckets((768, 512))
    assert (448, 448) in make_buckets(500)  # 500 is not a multiple of 64: the largest square that is


def test_make_buckets_small_resolution_and_errors():
    # min_side defaults to half the square side, so small targets keep landscape and portrait buckets too
    assert make_buckets(128) == [(64, 192), (64, 256), (128, 128), (192, 64), (256, 64)]
    assert min(min(b) for b in make_buckets(512)) == 256  # kohya's min_bucket_reso for 512 training
    assert make_buckets(128, min_side=128) == [(128, 128)]
    with pytest.raises(ValueError, match="smaller than the bucket step"):
        make_buckets(32)
    with pytest.raises(ValueError, match="step"):
        make_buckets(512, step=0)


@pytest.mark.parametrize("resolution, step", [(128, 32), (256, 32), (512, 64), (1024, 64)])
def test_small_targets_still_bucket_by_aspect(resolution, step):
    w, h = choose_bucket(300, 200, make_buckets(resolution, step=step))
    assert w > h and 1.2 <= w / h <= 1.8
    w, h = choose_bucket(200, 300, make_buckets(resolution, step=step))
    assert h > w


def test_choose_bucket():
    buckets = make_buckets(512)
    w, h = choose_bucket(2000, 1000, buckets)
    assert 1.8 <= w / h <= 2.2
    assert choose_bucket(1000, 2000, buckets) == (h, w)
    assert choose_bucket(333, 333, buckets) == (512, 512)
    assert choose_bucket(20, 10, [(128, 64), (256, 128), (64, 64)]) == (256, 128)  # tie -> larger area
    with pytest.raises(ValueError, match="no buckets"):
        choose_bucket(10, 10, [])


@pytest.mark.parametrize("size, max_area, step, want", [
    ((300, 200), 512 * 512, 64, (256, 192)),
    ((50, 30), 512 * 512, 64, (64, 64)),
    ((512, 512), 512 * 512, 64, (512, 512)),
    ((1000, 1000), 512 * 512, 64, (512, 512)),
    ((2000, 1000), 512 * 512, 64, (704, 320)),
    ((300, 200), 512 * 512, 32, (288, 192)),
])
def test_no_upscale_bucket(size, max_area, step, want):
    assert no_upscale_bucket(*size, max_area, step) == want


def test_fit_bucket_covers_then_crops_centre():
    out = fit_bucket(_thirds(90, 30), 30, 30, "nearest")
    assert out.size == (30, 30) and (pixels(out) == GREEN).all()
    assert fit_bucket(noise(50, 70), 64, 128).size == (64, 128)


# ---------------------------------------------------------------- prepare_image / target_size


@pytest.mark.parametrize("mode", ["crop", "letterbox", "buckets"])
def test_one_pixel_image_reaches_target(mode):
    img = Image.new("RGB", (1, 1), (9, 8, 7))
    out = prepare_image(img, mode, 512, 512)
    assert out.size == (512, 512)
    assert out.size == target_size(1, 1, mode, 512, 512)
    small = prepare_image(img, "buckets", 512, 512, no_upscale=True)
    assert small.size == (64, 64) == target_size(1, 1, "buckets", 512, 512, no_upscale=True)


def test_long_strip_letterbox_and_buckets():
    strip = Image.new("RGB", (20000, 200), RED)
    out = letterbox(strip, 64, 64, BLUE)
    arr = pixels(out)  # 20000×200 scaled by 64/20000 is 64×0.64 -> one row, at row 31
    assert (arr[:31] == BLUE).all() and (arr[32:] == BLUE).all()
    assert np.abs(arr[31].astype(int) - RED).max() <= 1
    buckets = make_buckets(512)
    widest = max(buckets, key=lambda b: b[0] / b[1])
    assert choose_bucket(20000, 200, buckets) == widest == (1024, 256)
    assert prepare_image(strip, "buckets", 512, 512).size == widest


def test_prepare_image_no_upscale_only_affects_buckets():
    img = Image.new("RGB", (300, 200), GREEN)
    assert prepare_image(img, "crop", 512, 512, no_upscale=True).size == (512, 512)
    assert prepare_image(img, "letterbox", 512, 512, no_upscale=True).size == (512, 512)
    assert prepare_image(img, "buckets", 512, 512, no_upscale=True).size == (256, 192)
    # explicit buckets made with step 32: the no-upscale bucket is rounded to 32 too
    fine = make_buckets(512, step=32)
    assert prepare_image(img, "buckets", 512, 512, buckets=fine, no_upscale=True).size == (288, 192)


def test_prepare_image_none_and_inputs_untouched():
    img = noise(30, 20)
    before = pixels(img).copy()
    same = prepare_image(img, "none", 512, 512)
    assert same is not img and same.size == (30, 20)
    for mode in PREP_MODES:
        prepare_image(img, mode, 64, 64, pad_color=(1, 2, 3))
    assert (pixels(img) == before).all() and img.size == (30, 20)


def test_prepare_image_letterbox_uses_pad_color():
    out = prepare_image(Image.new("RGB", (40, 20), GREEN), "letterbox", 32, 32, pad_color=(7, 7, 7), filter="nearest")
    assert (pixels(out)[:8] == 7).all() and (pixels(out)[8:24] == GREEN).all()


def test_prepare_image_refuses_unknown_mode_and_filter():
    img = Image.new("RGB", (4, 4))
    with pytest.raises(ValueError, match="crop, letterbox, buckets, none"):
        prepare_image(img, "stretch", 8, 8)
    with pytest.raises(ValueError, match="lanczos, area, bicubic, bilinear, nearest"):
        prepare_image(img, "crop", 8, 8, filter="sinc")
    with pytest.raises(ValueError, match="crop, letterbox, buckets, none"):
        target_size(4, 4, "stretch", 8, 8)


@pytest.mark.parametrize("size", [(1, 1), (300, 200), (200, 300), (1000, 250), (384, 384), (97, 1201)])
@pytest.mark.parametrize("mode", PREP_MODES)
@pytest.mark.parametrize("no_upscale", [False, True])
def test_target_size_agrees_with_prepare_image(size, mode, no_upscale):
    img = Image.new("RGB", size, (40, 50, 60))
    for target in ((384, 384), (512, 384)):
        out = prepare_image(img, mode, *target, no_upscale=no_upscale, filter="bilinear")
        assert out.size == target_size(*size, mode, *target, no_upscale=no_upscale)


@pytest.mark.parametrize("background", [(0, 0, 0), (255, 255, 255), (17, 128, 250)])
def test_alpha_composite_is_exactly_rounded_for_every_value_and_alpha(background):
    value, alpha = np.meshgrid(np.arange(256), np.arange(256))  # (256, 256) each: every pair once
    rgba = np.stack([value, value, value, alpha], -1).astype(np.uint8)
    got, got_alpha = to_rgb(Image.fromarray(rgba, "RGBA"), background)
    bg = np.array(background).reshape(1, 1, 3)
    expected = np.floor((value[..., None] * alpha[..., None] + bg * (255 - alpha[..., None])) / 255 + 0.5)
    assert (np.asarray(got) == expected).all()
    assert (got_alpha == alpha).all()


def test_letterbox_of_a_mask_matches_the_image_geometry():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    mask = Image.new("L", (40, 20), 255)
    a, m = letterbox(img, 32, 32, (0, 0, 255)), letterbox(mask, 32, 32, 0)
    painted = np.asarray(a)[:, :, 0] > 128  # red content rows
    assert m.mode == "L" and m.size == (32, 32)
    assert ((np.asarray(m) > 128) == painted).all()
