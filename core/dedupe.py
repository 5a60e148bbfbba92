"""Near-duplicate detection: perceptual hashes, flip- and border-aware grouping, and which copy to keep.

Nothing here knows ComfyUI, and nothing here touches files: the caller hashes images (PIL in, ints out), this
module groups the hashes and decides which image of each group stays; the report says what was kept and dropped
and why. Deleting or moving anything is left to the user.

Hashes are 64-bit pHashes (DCT of a 32x32 grey image, Zauner 2010). A mirrored copy is caught by also hashing the
mirror; a letterboxed copy by trimming uniform borders before hashing. Grouping compares every pair with numpy
XOR + popcount in blocks, so 30,000 images take seconds, and joins pairs into connected components (union-find).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

HASH_BITS = 64
KEEP_POLICIES = ("largest", "sharpest", "first")

_DCT_SIZE = 32  # the grey image the DCT runs on is 32x32
_HASH_SIDE = 8  # the top-left 8x8 low frequencies make the 64 bits
_SHARPNESS_MAX_SIDE = 512
_BLOCK_ELEMENTS = 4_000_000  # pairs compared per numpy step: ~32 MB of uint64 temporaries
_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)  # (256,)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C (n, n): C @ x is the DCT-II of the column vector x."""
    k = np.arange(n)[:, None]  # (n, 1) frequency
    i = np.arange(n)[None, :]  # (1, n) sample
    c = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


_DCT = _dct_matrix(_DCT_SIZE)  # (32, 32)


def _check_image(img, what: str) -> None:
    if not isinstance(img, Image.Image):
        raise TypeError(f"{what} expects a PIL image; got {type(img).__name__}. Open the file with PIL.Image.open.")
    if img.width < 1 or img.height < 1:
        raise ValueError(f"{what} expects an image of at least 1x1 pixel; got {img.width}x{img.height}.")


def _border_pixels(img: Image.Image) -> np.ndarray:
    """The pixels as int16 (h, w, c) for border tests; alpha is ignored, grey stays one channel."""
    if img.mode.startswith(("I", "F")):
        # 16-bit / float grey: rescale to 0..255 so `tolerance` means the same thing as for 8-bit images.
        a = np.asarray(img.convert("F"), dtype=np.float64)  # (h, w)
        span = float(a.max() - a.min()) or 1.0
        return np.rint((a - a.min()) * (255.0 / span)).astype(np.int16)[..., None]
    if img.mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.int16)[..., None]
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def _leading_matches(lines: np.ndarray, tolerance: int) -> int:
    """How many leading lines of `lines` (n, m, c) lie within `tolerance` of both corner pixels of the first line."""
    # Testing against both corners (not one) makes the trim of a mirrored image the mirror of the trim.
    near_first = np.all(np.abs(lines - lines[0, 0]) <= tolerance, axis=(1, 2))  # (n,)
    near_last = np.all(np.abs(lines - lines[0, -1]) <= tolerance, axis=(1, 2))  # (n,)
    uniform = near_first & near_last
    return int(uniform.size if uniform.all() else np.argmin(uniform))


def _limit(first: int, last: int, size: int, min_keep: float) -> tuple[int, int]:
    """Shrinks the two trims of one dimension, in proportion, so at least ceil(min_keep * size) stays."""
    budget = size - math.ceil(min_keep * size)
    if first + last <= budget:
        return first, last
    # A plain-colour image matches to the far edge from both sides; sharing the budget keeps the centre.
    new_first = (first * budget) // (first + last)
    return new_first, min(last, budget - new_first)


def trim_borders(img: Image.Image, tolerance: int = 10, min_keep: float = 0.5) -> Image.Image:
    """Cuts uniform bars (letterbox / pillarbox) off each side: a row or column is border when every pixel is within
    `tolerance` (per channel) of both corner colours of that side; at most (1 - min_keep) of each dimension goes.

    Rows are trimmed first, then columns inside the remaining rows, so a top bar of one colour and a side bar of
    another are both found. Returns a new image; the input is untouched.
    """
    _check_image(img, "trim_borders")
    if not 0 <= tolerance <= 255:
        raise ValueError(f"tolerance must be 0..255 (per-channel difference); got {tolerance}. 10 suits JPEG bars.")
    if not 0.0 < min_keep <= 1.0:
        raise ValueError(f"min_keep must be in (0, 1]; got {min_keep}. 0.5 keeps at least half of each side.")
    a = _border_pixels(img)  # (h, w, c)
    h, w = a.shape[:2]
    top, bottom = _limit(_leading_matches(a, tolerance), _leading_matches(a[::-1], tolerance), h, min_keep)
    rows = a[top:h - bottom]  # (h', w, c)
    cols = rows.transpose(1, 0, 2)  # (w, h', c): columns as lines
    left, right = _limit(_leading_matches(cols, tolerance), _leading_matches(cols[::-1], tolerance), w, min_keep)
    return img.crop((left, top, w - right, h - bottom))


def _grey32(img: Image.Image) -> np.ndarray:
    """The image as a 32x32 float64 grey array (area average when shrinking, Lanczos when enlarging)."""
    grey = img.convert("F") if img.mode.startswith(("I", "F")) else img.convert("L")
    shrinking = img.width >= _DCT_SIZE and img.height >= _DCT_SIZE
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
    return np.asarray(grey.resize((_DCT_SIZE, _DCT_SIZE), resample), dtype=np.float64)  # (32, 32)


def _hash_grey32(grey: np.ndarray) -> int:
    """pHash bits of a (32, 32) grey array: 2-D DCT-II, top-left 8x8, bit = coefficient > median of the 63 AC ones."""
    coeffs = (_DCT @ grey @ _DCT.T)[:_HASH_SIDE, :_HASH_SIDE].ravel()  # (64,) row-major, DC first
    # The DC term is the mean brightness, far larger than the rest; leaving it out keeps the median about structure.
    bits = coeffs > np.median(coeffs[1:])  # (64,)
    value = 0
    for bit in bits:  # first coefficient becomes the most significant bit
        value = (value << 1) | int(bit)
    return value


def phash(img: Image.Image) -> int:
    """64-bit perceptual hash (pHash, Zauner 2010): DCT-II of a 32x32 grey image; bit = 8x8 low frequency > median."""
    _check_image(img, "phash")
    return _hash_grey32(_grey32(img))


def image_hashes(img: Image.Image, *, flip_aware: bool = True, border_aware: bool = True) -> tuple[int, int | None]:
    """(pHash of the image, pHash of its horizontal mirror or None), after trim_borders when border_aware."""
    _check_image(img, "image_hashes")
    if border_aware:
        img = trim_borders(img)
    grey = _grey32(img)  # (32, 32)
    # Mirroring the 32x32 grey equals hashing the mirrored image (the area average commutes with the flip), cheaper.
    return _hash_grey32(grey), (_hash_grey32(grey[:, ::-1]) if flip_aware else None)


def sharpness(img: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image (Pech-Pacheco et al. 2000), at most 512 px long side."""
    _check_image(img, "sharpness")
    grey = img.convert("F") if img.mode.startswith(("I", "F")) else img.convert("L")
    scale = _SHARPNESS_MAX_SIDE / max(grey.size)
    if scale < 1.0:
        # Same scale for every large image, so a 4K copy and a 1080p copy of a frame measure alike.
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    a = np.asarray(grey, dtype=np.float64)  # (h, w)
    if a.shape[0] < 3 or a.shape[1] < 3:
        return 0.0  # no pixel has four neighbours
    lap = a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4.0 * a[1:-1, 1:-1]  # (h-2, w-2)
    return float(lap.var())


@dataclass
class HashedImage:
    key: str  # identifies the image (a path or an id)
    hash: int
    flip_hash: int | None  # hash of the horizontal mirror; None when mirrored copies are not duplicates
    width: int
    height: int
    sharpness: float = 0.0


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes (Hamming distance)."""
    if a < 0 or b < 0:
        raise ValueError(f"Hashes are non-negative integers; got {a} and {b}. Pass values from phash().")
    return (a ^ b).bit_count()


def _pair_distance(a: HashedImage, b: HashedImage) -> int:
    """min over same-way and mirrored comparisons; symmetric, so the result never depends on input order."""
    fa = a.hash if a.flip_hash is None else a.flip_hash
    fb = b.hash if b.flip_hash is None else b.flip_hash
    return min(hamming(a.hash, b.hash), hamming(a.hash, fb), hamming(fa, b.hash))


def _popcount_table(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element via a byte lookup table (for numpy < 2.0, which lacks np.bitwise_count)."""
    as_bytes = np.ascontiguousarray(x).view(np.uint8).reshape(x.shape + (8,))  # (..., 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


def _popcount_into(x: np.ndarray, out: np.ndarray) -> None:
    """Writes the set bits of each uint64 in `x` into the uint8 array `out` of the same shape."""
    if hasattr(np, "bitwise_count"):
        np.bitwise_count(x, out=out)
    else:
        out[...] = _popcount_table(x)


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) or not 0 <= threshold <= HASH_BITS:
        raise ValueError(f"threshold must be a whole number of bits in 0..{HASH_BITS}; got {threshold!r}. "
                         f"6 catches resized and recompressed copies.")


def _as_uint64(values: list[int], what: str) -> np.ndarray:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < 2 ** HASH_BITS:
            raise ValueError(f"{what} must be in 0..2**{HASH_BITS}-1; got {v}. Pass values from phash().")
    return np.array(values, dtype=np.uint64)  # (n,)


def _roots(parent: np.ndarray) -> np.ndarray:
    """Compresses the union-find forest in place by pointer jumping and returns it: then parent[i] is i's root."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent[:] = grand


def _union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Joins the components of each pair (a[k], b[k]); the smallest index of a component is its root."""
    while a.size:
        roots = _roots(parent)
        ra, rb = roots[a], roots[b]
        apart = ra != rb
        lo = np.minimum(ra[apart], rb[apart])
        hi = np.maximum(ra[apart], rb[apart])
        # Roots only ever point to smaller roots, so no cycle can form; when several pairs name the same `hi`, one
        # wins here and the others are joined on the next round (they still differ after compression).
        np.minimum.at(parent, hi, lo)
        a, b = lo, hi


def _union_block(parent: np.ndarray, match: np.ndarray, start: int) -> None:
    """Joins row start + r with column start + c wherever match[r, c] (r, n - start) is True."""
    rows = match.shape[0]
    count = np.count_nonzero(match)
    if count == 0:
        return  # the usual case; np.nonzero on an all-False block would cost as much as the comparisons
    if count > rows:
        # Dense block (a run of near-identical frames has millions of pairs): first join each row with the smallest
        # root among its matches and each column with the smallest root among its rows, with whole-array reductions;
        # most pairs then already share a root and never become Python-visible edges.
        n = parent.size
        roots = _roots(parent)
        col_roots, row_roots = roots[start:], roots[start:start + rows]  # (n - start,), (r,)
        row_min = np.where(match, col_roots[None, :], n).min(axis=1)  # (r,) n where a row matches nothing
        col_min = np.where(match, row_roots[:, None], n).min(axis=0)  # (n - start,)
        has_row, has_col = row_min < n, col_min < n
        _union(parent, np.concatenate([start + np.flatnonzero(has_row), start + np.flatnonzero(has_col)]),
               np.concatenate([row_min[has_row], col_min[has_col]]))
        roots = _roots(parent)
        match = match & (roots[start:][None, :] != roots[start:start + rows][:, None])  # pairs still apart
        if not match.any():
            return
    r, c = np.nonzero(match)
    _union(parent, start + r, start + c)


def find_duplicate_groups(images: list[HashedImage], threshold: int = 6) -> list[list[tuple[int, int]]]:
    """Connected components (union-find) of images whose flip-aware pHash distance is <= threshold, size >= 2 only.

    distance(i, j) = min(hamming(h_i, h_j), hamming(h_i, flip_j), hamming(flip_i, h_j)), a missing flip hash standing
    for the hash itself. Each group is [(index, distance to the group's first member)], sorted by index; groups are
    sorted by first index. Every pair is compared: blocks of rows against the later columns with XOR + popcount.
    """
    _check_threshold(threshold)
    n = len(images)
    if n < 2:
        return []
    h = _as_uint64([im.hash for im in images], "hash")  # (n,)
    has_flip = any(im.flip_hash is not None for im in images)
    f = _as_uint64([im.hash if im.flip_hash is None else im.flip_hash for im in images], "flip_hash")  # (n,)
    parent = np.arange(n, dtype=np.int64)  # (n,) union-find forest
    rows = max(1, _BLOCK_ELEMENTS // n)
    # Buffers reused by every block (about 45 MB): allocating them per block costs as much as the comparisons.
    xor = np.empty((rows, n), dtype=np.uint64)
    dist = np.empty((rows, n), dtype=np.uint8)
    other = np.empty((rows, n), dtype=np.uint8)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        r, m = stop - start, n - start  # the block compares rows start..stop-1 with columns start..n-1 (j >= i)
        x, d, o = xor[:r, :m], dist[:r, :m], other[:r, :m]  # (r, m) views
        hi, fi, hj, fj = h[start:stop, None], f[start:stop, None], h[None, start:], f[None, start:]
        np.bitwise_xor(hi, hj, out=x)
        _popcount_into(x, d)
        if has_flip:
            for a, b in ((hi, fj), (fi, hj)):
                np.bitwise_xor(a, b, out=x)
                _popcount_into(x, o)
                np.minimum(d, o, out=d)
        match = d <= threshold  # (r, m)
        # Column start + c pairs with row start + r only when it comes later: each unordered pair once, no self-pairs.
        match[:, :r] &= np.triu(np.ones((r, r), dtype=bool), k=1)
        _union_block(parent, match, start)
    roots = _roots(parent)
    order = np.argsort(roots, kind="stable")  # (n,) indices grouped by root, ascending within each group
    bounds = np.flatnonzero(np.diff(roots[order])) + 1  # where one component ends and the next begins
    groups = []
    for members in np.split(order, bounds):  # in root order, and a root is its component's smallest index
        if members.size >= 2:
            first = images[int(members[0])]
            groups.append([(int(i), _pair_distance(first, images[int(i)])) for i in members])
    return groups


@dataclass
class DedupeReport:
    kept: list[str]  # every image not dropped, in input order
    dropped: list[dict]  # {"key", "kept", "distance", "group"}
    groups: list[dict]  # {"group", "kept", "members": [{"key", "distance", "width", "height", "sharpness"}]}
    threshold: int

    def to_json(self) -> str:
        """The report as indented JSON with sorted keys, so two runs over the same images give identical text."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DedupeReport:
        """Reads back what to_json wrote."""
        data = json.loads(text)
        missing = [k for k in ("kept", "dropped", "groups", "threshold") if not isinstance(data, dict) or k not in data]
        if missing:
            raise ValueError(f"Not a dedupe report: missing {', '.join(missing)}. Expected the JSON that "
                             f"DedupeReport.to_json writes.")
        return cls(kept=list(data["kept"]), dropped=list(data["dropped"]), groups=list(data["groups"]),
                   threshold=int(data["threshold"]))

    def summary(self, max_lines: int = 50) -> str:
        """Human text: a count line, then one 'kept X; dropped Y (distance d)' line per dropped image, truncated."""
        if max_lines < 0:
            raise ValueError(f"max_lines must be 0 or more; got {max_lines}.")
        total = len(self.kept) + len(self.dropped)
        lines = [f"{total} images, {len(self.groups)} groups, {len(self.dropped)} dropped "
                 f"(threshold {self.threshold})"]
        details = [f"group {d['group']}: kept {d['kept']}; dropped {d['key']} (distance {d['distance']})"
                   for d in self.dropped]
        lines += details[:max_lines]
        if len(details) > max_lines:
            lines.append(f"... and {len(details) - max_lines} more")
        return "\n".join(lines)


def _keep_rank(policy: str, index: int, im: HashedImage) -> tuple:
    """Sort key: the smallest one in a group is kept."""
    pixels = im.width * im.height
    if policy == "largest":
        return (-pixels, -im.sharpness, index)
    if policy == "sharpest":
        return (-im.sharpness, -pixels, index)
    return (index,)


def dedupe(images: list[HashedImage], threshold: int = 6, keep: str = "largest") -> DedupeReport:
    """Groups near-duplicates (find_duplicate_groups) and keeps one per group by `keep`; decides only, deletes nothing.

    largest: most pixels, ties -> sharpest -> first; sharpest: highest sharpness, ties -> largest -> first;
    first: lowest index. Distances in the report are to the kept image of the group.
    """
    _check_threshold(threshold)
    if keep not in KEEP_POLICIES:
        raise ValueError(f"Unknown keep policy {keep!r}; expected one of {', '.join(KEEP_POLICIES)}.")
    seen = set()
    for im in images:
        if im.key in seen:
            raise ValueError(f"Two images share the key {im.key!r}; keys identify images in the report, so each "
                             f"must be unique. Use the file path or a unique id.")
        seen.add(im.key)
    dropped, groups, dropped_index = [], [], set()
    for number, members in enumerate(find_duplicate_groups(images, threshold), start=1):
        indices = [i for i, _ in members]
        winner = min(indices, key=lambda i: _keep_rank(keep, i, images[i]))
        kept_image = images[winner]
        rows = []
        for i in indices:
            im = images[i]
            distance = 0 if i == winner else _pair_distance(kept_image, im)
            rows.append({"key": im.key, "distance": distance, "width": int(im.width), "height": int(im.height),
                         "sharpness": float(im.sharpness)})  # plain Python numbers, so the report is JSON
            if i != winner:
                dropped.append({"key": im.key, "kept": kept_image.key, "distance": distance, "group": number})
                dropped_index.add(i)
        groups.append({"group": number, "kept": kept_image.key, "members": rows})
    kept = [im.key for i, im in enumerate(images) if i not in dropped_index]
    return DedupeReport(kept=kept, dropped=dropped, groups=groups, threshold=int(threshold))
