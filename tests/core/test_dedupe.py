"""Near-duplicates: pHash robustness (resize, JPEG, mirror, letterbox), border trimming, keep policies, the report,
and vectorised grouping checked against a plain pairwise loop. Every image is drawn here with a seeded generator."""

import copy
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from atelier.core import dedupe as dd
from atelier.core.dedupe import (HASH_BITS, KEEP_POLICIES, DedupeReport, HashedImage, dedupe, find_duplicate_groups,
                                 hamming, image_hashes, phash, sharpness, trim_borders)


def scene(seed: int, size=(192, 144)) -> Image.Image:
    """A smooth tinted wave background with eight random filled shapes: structured, asymmetric, no flat edge."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)  # (h, w)
    fx, fy = rng.uniform(1.0, 3.0, 2)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    wave = 0.5 + 0.2 * np.sin(2 * np.pi * fx * xx + px) * np.cos(2 * np.pi * fy * yy + py)  # (h, w)
    img = Image.fromarray((wave[..., None] * rng.uniform(0.6, 1.0, 3) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(8):
        x0, y0 = rng.integers(0, w - 20), rng.integers(0, h - 20)
        x1, y1 = x0 + rng.integers(15, w // 2), y0 + rng.integers(15, h // 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return img


def jpeg(img: Image.Image, quality: int = 60) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def letterbox(img: Image.Image, canvas=(256, 256)) -> Image.Image:
    """The image scaled to fit a black canvas of another aspect ratio, centred (bars top and bottom)."""
    scale = min(canvas[0] / img.width, canvas[1] / img.height)
    inner = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    out = Image.new("RGB", canvas, (0, 0, 0))
    out.paste(inner, ((canvas[0] - inner.width) // 2, (canvas[1] - inner.height) // 2))
    return out


def mirror(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def hashed(key: str, img: Image.Image, **kw) -> HashedImage:
    h, f = image_hashes(img, **kw)
    return HashedImage(key, h, f, img.width, img.height, sharpness(img))


def brute_force_groups(images, threshold):
    """The definition, pair by pair in plain Python: what the vectorised grouping must reproduce."""
    n = len(images)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if dd._pair_distance(images[i], images[j]) <= threshold:
                a, b = find(i), find(j)
                parent[max(a, b)] = min(a, b)
    comps = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return [[(i, dd._pair_distance(images[m[0]], images[i])) for i in m] for _, m in sorted(comps.items())
            if len(m) >= 2]


# ---- hashes -------------------------------------------------------------------------------------------------------

def test_phash_is_a_64_bit_int_and_leaves_the_image_alone():
    img = scene(0)
    before = img.tobytes()
    h = phash(img)
    assert isinstance(h, int) and 0 <= h < 2 ** HASH_BITS
    assert phash(img) == h and img.tobytes() == before
    assert phash(img.convert("L")) == h  # the hash only sees grey


def test_resized_and_jpeg_copies_are_near_distinct_images_are_far():
    images = [scene(s) for s in range(6)]
    for img in images:
        h = phash(img)
        assert hamming(h, phash(img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS))) <= 6
        assert hamming(h, phash(jpeg(img, 60))) <= 6
    hashes = [phash(img) for img in images]
    assert min(hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 16


def test_mirrored_copy_is_a_duplicate_only_when_flip_aware():
    img, copy_ = scene(1), mirror(scene(1))
    aware = dedupe([hashed("a", img), hashed("a_mirror", copy_)], threshold=6)
    blind = dedupe([hashed("a", img, flip_aware=False), hashed("a_mirror", copy_, flip_aware=False)], threshold=6)
    assert [d["key"] for d in aware.dropped] == ["a_mirror"] and aware.dropped[0]["distance"] <= 6
    assert blind.dropped == [] and blind.kept == ["a", "a_mirror"]
    assert hamming(phash(img), phash(copy_)) > 16  # the scene is asymmetric, so flip-awareness is what matched


def test_flip_hash_equals_the_hash_of_the_mirrored_image():
    for seed in range(4):
        img = scene(seed)
        h, f = image_hashes(img, border_aware=False)
        assert h == phash(img)
        assert hamming(f, phash(mirror(img))) <= 2  # equal up to rounding of the 8-bit grey thumbnail
        assert image_hashes(img, flip_aware=False)[1] is None


def test_letterboxed_copy_is_a_duplicate_when_border_aware():
    img = scene(0)
    boxed = letterbox(img)  # 192x144 content scaled to 256x192 on a 256x256 black canvas
    h, _ = image_hashes(img)
    assert hamming(h, image_hashes(boxed)[0]) <= 6
    assert hamming(h, image_hashes(jpeg(boxed, 60))[0]) <= 6
    assert hamming(image_hashes(img, border_aware=False)[0], image_hashes(boxed, border_aware=False)[0]) > 6
    report = dedupe([hashed("a", img), hashed("a_boxed", jpeg(boxed))], threshold=6)
    assert [d["key"] for d in report.dropped] == ["a"]  # same content, the letterboxed copy has more pixels


# ---- trim_borders -------------------------------------------------------------------------------------------------

def test_trim_borders_cuts_exactly_the_padding():
    rng = np.random.default_rng(3)
    content = Image.fromarray(rng.integers(60, 200, (30, 40, 3), dtype=np.uint8))  # no pixel near black
    padded = Image.new("RGB", (60, 50), (0, 0, 0))
    padded.paste(content, (8, 12))  # 8 left, 12 right, 12 top, 8 bottom
    before = padded.tobytes()
    out = trim_borders(padded)
    assert out.size == (40, 30)
    assert out.tobytes() == content.tobytes()
    assert padded.tobytes() == before and padded.size == (60, 50)


def test_trim_borders_limited_by_min_keep_still_holds_the_content():
    rng = np.random.default_rng(3)
    content = Image.fromarray(rng.integers(60, 200, (30, 40, 3), dtype=np.uint8))
    padded = Image.new("RGB", (100, 80), (0, 0, 0))
    padded.paste(content, (10, 20))  # 60 of 100 columns and 50 of 80 rows are bars: more than half
    out = trim_borders(padded, min_keep=0.5)
    assert out.size == (50, 40)  # the budget is shared between the sides in proportion to their bars
    assert out.crop((2, 4, 42, 34)).tobytes() == content.tobytes()


def test_trim_borders_finds_bars_of_different_colours_per_side():
    rng = np.random.default_rng(4)
    content = Image.fromarray(rng.integers(60, 200, (50, 60, 3), dtype=np.uint8))
    img = Image.new("RGB", (67, 55), (0, 0, 0))  # black bar 7 px on the left
    img.paste((255, 255, 255), (0, 0, 67, 5))  # white bar 5 px on top, across the whole width
    img.paste(content, (7, 5))
    assert trim_borders(img).size == (60, 50)


def test_trim_borders_tolerance_absorbs_noise_in_the_bars():
    rng = np.random.default_rng(5)
    content = rng.integers(100, 200, (40, 40, 3), dtype=np.uint8)
    canvas = rng.integers(0, 9, (60, 40, 3), dtype=np.uint8)  # JPEG-like noise 0..8 in a 10-row bar each side
    canvas[10:50] = content
    img = Image.fromarray(canvas)
    assert trim_borders(img, tolerance=10).size == (40, 40)
    assert trim_borders(img, tolerance=3).size == (40, 60)


def test_trim_borders_never_goes_below_min_keep():
    plain = Image.new("RGB", (100, 60), (90, 90, 90))
    out = trim_borders(plain, min_keep=0.5)
    assert out.width >= 50 and out.height >= 30
    assert trim_borders(plain, min_keep=1.0).size == (100, 60)
    untouched = trim_borders(scene(2))
    assert untouched.size == (192, 144) and untouched is not scene(2)


def test_trim_borders_of_a_mirror_is_the_mirror_of_the_trim():
    rng = np.random.default_rng(6)
    img = Image.new("RGB", (80, 60), (0, 0, 0))
    img.paste(Image.fromarray(rng.integers(60, 200, (40, 50, 3), dtype=np.uint8)), (5, 12))
    ramp = np.linspace(0, 15, 80).round().astype(np.uint8)  # (80,) a faint bar: 0 .. 15 left to right
    ramp[0] = 5
    bar = np.repeat(np.repeat(ramp[None, :, None], 3, axis=2), 4, axis=0)  # (4, 80, 3)
    img.paste(Image.fromarray(bar), (0, 0))  # within 10 of its left corner (5) but not of its right corner (15)
    assert trim_borders(mirror(img)).tobytes() == mirror(trim_borders(img)).tobytes()


@pytest.mark.parametrize("kwargs, message", [({"tolerance": -1}, "0..255"), ({"tolerance": 300}, "0..255"),
                                             ({"min_keep": 0.0}, r"\(0, 1\]"), ({"min_keep": 1.5}, r"\(0, 1\]")])
def test_trim_borders_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        trim_borders(scene(0), **kwargs)


# ---- sharpness and keep policies ----------------------------------------------------------------------------------

def test_sharpness_drops_with_blur_and_ignores_scale_above_512():
    img = scene(7)
    assert sharpness(img) > 10 * sharpness(img.filter(ImageFilter.GaussianBlur(2)))
    assert sharpness(Image.new("RGB", (64, 64), (40, 50, 60))) == 0.0
    big = img.resize((1024, 768), Image.Resampling.NEAREST)
    assert sharpness(big) == pytest.approx(sharpness(big.resize((512, 384), Image.Resampling.BOX)), rel=0.01)


def test_keep_largest_keeps_the_bigger_copy():
    img = scene(8)
    small = img.resize((96, 72), Image.Resampling.LANCZOS)
    a, b = hashed("small", small), hashed("big", img)
    report = dedupe([a, b, hashed("other", scene(9))], threshold=6)
    assert report.kept == ["big", "other"]
    # the flip-aware distance computed here from the two hashes, not read back from the report
    distance = min(dd.hamming(a.hash, b.hash), dd.hamming(a.hash, b.flip_hash), dd.hamming(a.flip_hash, b.hash))
    assert distance <= 6
    assert report.dropped == [{"key": "small", "kept": "big", "distance": distance, "group": 1}]


def test_keep_sharpest_keeps_the_unblurred_copy():
    img = scene(10)
    blurred = img.filter(ImageFilter.GaussianBlur(2))
    images = [hashed("blurred", blurred), hashed("sharp", img)]
    assert dedupe(images, keep="sharpest").kept == ["sharp"]
    assert dedupe(images, keep="largest").kept == ["sharp"]  # same size: the tie goes to the sharper one
    assert dedupe(images, keep="first").kept == ["blurred"]


def test_keep_ties_fall_through_to_the_next_rule():
    same = [HashedImage(k, 7, 7, w, h, s) for k, w, h, s in
            [("a", 10, 10, 1.0), ("b", 20, 10, 1.0), ("c", 20, 10, 5.0), ("d", 10, 10, 9.0)]]
    assert dedupe(same, keep="largest").kept == ["c"]  # b and c have most pixels; c is sharper
    assert dedupe(same, keep="sharpest").kept == ["d"]
    twins = [HashedImage("x", 7, None, 10, 10, 1.0), HashedImage("y", 7, None, 10, 10, 1.0)]
    assert dedupe(twins, keep="sharpest").kept == ["x"]  # a full tie keeps the first


# ---- report -------------------------------------------------------------------------------------------------------

def mixed_set():
    a, b = scene(11), scene(12)
    return [hashed("a", a), hashed("b", b), hashed("a_small", a.resize((96, 72), Image.Resampling.LANCZOS)),
            hashed("a_mirror", mirror(a)), hashed("c", scene(13)), hashed("b_jpeg", jpeg(b)),
            hashed("a_boxed", letterbox(a, (120, 180)))]


def test_kept_and_dropped_partition_the_input_and_inputs_stay_untouched():
    images = mixed_set()
    before = copy.deepcopy(images)
    report = dedupe(images, threshold=6)
    dropped = [d["key"] for d in report.dropped]
    assert sorted(report.kept + dropped) == sorted(im.key for im in images)
    assert not set(report.kept) & set(dropped)
    assert report.kept == [k for k in (im.key for im in images) if k not in dropped]  # input order
    assert sorted(dropped) == ["a_boxed", "a_mirror", "a_small", "b_jpeg"]
    assert [(g["group"], g["kept"], len(g["members"])) for g in report.groups] == [(1, "a", 4), (2, "b", 2)]
    assert all(d["kept"] in report.kept for d in report.dropped)
    assert images == before


def test_report_json_round_trips_and_is_stable():
    report = dedupe(mixed_set(), threshold=6)
    text = report.to_json()
    again = DedupeReport.from_json(text)
    assert again == report
    assert again.to_json() == text
    assert list(json.loads(text)) == ["dropped", "groups", "kept", "threshold"]  # sorted keys
    assert text.startswith('{\n  "dropped": [\n    {\n      "distance": ')  # indented, keys sorted at every level
    with pytest.raises(ValueError, match="missing groups, threshold"):
        DedupeReport.from_json('{"kept": [], "dropped": []}')


def test_summary_lists_each_dropped_image_and_truncates():
    report = dedupe(mixed_set(), threshold=6)
    lines = report.summary().splitlines()
    assert lines[0] == "7 images, 2 groups, 4 dropped (threshold 6)"
    assert "group 1: kept a; dropped a_small (distance " in lines[1]
    assert len(lines) == 5 and all("kept " in line and "(distance " in line for line in lines[1:])
    short = report.summary(max_lines=1).splitlines()
    assert len(short) == 3 and short[-1] == "... and 3 more"


# ---- grouping -----------------------------------------------------------------------------------------------------

def test_grouping_5000_random_hashes_finds_only_the_planted_pairs():
    rng = np.random.default_rng(20)
    hashes = rng.integers(0, 2 ** 63, size=5000, dtype=np.uint64).tolist()
    hashes = [h * 2 + int(b) for h, b in zip(hashes, rng.integers(0, 2, 5000))]  # full 64-bit range
    flips = [int(v) for v in rng.integers(0, 2 ** 63, size=5000, dtype=np.uint64)]
    hashes[3000] = hashes[17] ^ (1 << 63 | 1 << 20 | 1)  # 3 bits apart
    flips[4200] = hashes[999] ^ (1 << 40 | 1 << 5)  # the mirror of 4200 is 2 bits from 999
    images = [HashedImage(str(i), hashes[i], flips[i], 8, 8) for i in range(5000)]
    groups = find_duplicate_groups(images, threshold=6)
    assert groups == [[(17, 0), (3000, 3)], [(999, 0), (4200, 2)]]


def test_grouping_is_transitive():
    a = 0x0123_4567_89AB_CDEF
    b = a ^ 0b11111  # 5 bits from a
    c = b ^ (0b11111 << 40)  # 5 bits from b, 10 from a
    images = [HashedImage("a", a, None, 1, 1), HashedImage("far", ~a & (2 ** 64 - 1), None, 1, 1),
              HashedImage("b", b, None, 1, 1), HashedImage("c", c, None, 1, 1)]
    assert find_duplicate_groups(images, threshold=6) == [[(0, 0), (2, 5), (3, 10)]]
    assert find_duplicate_groups(images, threshold=4) == []
    # The bridge listed last: both of its pairs join into the same index in one union step.
    bridge_last = [images[0], images[3], images[2]]
    assert find_duplicate_groups(bridge_last, threshold=6) == [[(0, 0), (1, 10), (2, 5)]]


def test_grouping_joins_a_chain_inside_a_block_with_many_pairs():
    bits = [sum(1 << b for b in range(k, k + 5)) for k in range(0, 20, 5)]  # four disjoint 5-bit masks
    h3 = bits[0]
    h0, h1 = h3 ^ bits[1], h3 ^ bits[2]  # 0~3 and 1~3 (5 bits); 0 and 1 are 10 apart
    h2 = h1 ^ bits[3]  # 1~2; 2 is 10 from 3 and 15 from 0
    far = 2 ** 64 - 1 - 2 ** 40  # a clique of four equal hashes far from the chain: more pairs than rows
    images = [HashedImage(str(i), v, None, 1, 1) for i, v in enumerate([h0, h1, h2, h3, far, far, far, far])]
    expected = [[(0, 0), (1, 10), (2, 15), (3, 5)], [(4, 0), (5, 0), (6, 0), (7, 0)]]
    assert brute_force_groups(images, 6) == expected
    assert find_duplicate_groups(images, 6) == expected


def test_grouping_matches_the_pairwise_definition_on_clusters():
    rng = np.random.default_rng(21)
    images = []
    for cluster in range(12):  # clusters of 1..40 near copies, some mirrored, between random singletons
        centre = int(rng.integers(0, 2 ** 63, dtype=np.uint64)) * 2
        mirrored = int(rng.integers(0, 2 ** 63, dtype=np.uint64)) * 2
        for k in range(int(rng.integers(1, 41))):
            noise = 0
            for bit in rng.choice(64, size=int(rng.integers(0, 5)), replace=False):
                noise |= 1 << int(bit)
            if k % 5 == 4:  # hashed without its mirror: only the others' mirror hashes can match it
                images.append(HashedImage(f"{cluster}.{k}", centre ^ noise, None, 1, 1))
            elif k % 5 == 2:  # stored the other way round: its mirror hash is the cluster's hash
                images.append(HashedImage(f"{cluster}.{k}", mirrored ^ noise, centre ^ noise, 1, 1))
            else:
                images.append(HashedImage(f"{cluster}.{k}", centre ^ noise, mirrored ^ noise, 1, 1))
    order = rng.permutation(len(images))
    images = [images[i] for i in order]
    for threshold in (0, 3, 6, 12):
        assert find_duplicate_groups(images, threshold) == brute_force_groups(images, threshold)


def test_popcount_table_agrees_with_python():
    rng = np.random.default_rng(22)
    values = rng.integers(0, 2 ** 63, size=(7, 9), dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # (7, 9)
    counts = dd._popcount_table(values)
    assert counts.shape == (7, 9)
    assert counts.tolist() == [[int(v).bit_count() for v in row] for row in values.tolist()]
    out = np.empty((7, 9), dtype=np.uint8)
    dd._popcount_into(values, out)
    assert out.tolist() == counts.tolist()


# ---- bad input ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", [-1, 65, 2.5, True])
def test_threshold_outside_0_to_64_is_refused(threshold):
    images = [HashedImage("a", 1, None, 1, 1)]
    with pytest.raises(ValueError, match=r"0\.\.64"):
        dedupe(images, threshold=threshold)
    with pytest.raises(ValueError, match=r"0\.\.64"):
        find_duplicate_groups(images, threshold=threshold)


def test_unknown_keep_policy_names_the_valid_ones():
    with pytest.raises(ValueError, match="largest, sharpest, first") as err:
        dedupe([HashedImage("a", 1, None, 1, 1)], keep="biggest")
    assert "'biggest'" in str(err.value) and all(p in str(err.value) for p in KEEP_POLICIES)


def test_empty_input_gives_an_empty_report():
    report = dedupe([])
    assert (report.kept, report.dropped, report.groups, report.threshold) == ([], [], [], 6)
    assert report.summary() == "0 images, 0 groups, 0 dropped (threshold 6)"
    assert find_duplicate_groups([]) == []


def test_duplicate_keys_and_bad_hashes_are_refused():
    with pytest.raises(ValueError, match="share the key 'a'"):
        dedupe([HashedImage("a", 1, None, 1, 1), HashedImage("a", 2, None, 1, 1)])
    with pytest.raises(ValueError, match=r"hash must be in 0\.\.2\*\*64-1"):
        find_duplicate_groups([HashedImage("a", 2 ** 64, None, 1, 1), HashedImage("b", 1, None, 1, 1)])
    with pytest.raises(ValueError, match="non-negative"):
        hamming(-1, 3)
    with pytest.raises(TypeError, match="PIL image"):
        phash(np.zeros((8, 8), dtype=np.uint8))
