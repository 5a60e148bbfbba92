"""Before/after image pairs for slider training: which "after" image goes with which "before" image.

Nothing here knows ComfyUI. Two rules: `same_name` pairs files with the same name stem in two folders (the
image-slider README of rohitgandikota/sliders: "paired files in both folders should have same names"); `suffix`
pairs `img.png` with `img_after.png` in one folder (the "diff target name" of hako-mikan/sd-webui-traintrain's
Multi-ADDifT). A missing partner, a name used twice or a different pixel size is one line in the problems, and
that pair is skipped; only when no pair is left does matching fail.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePath

from .dataset import BEFORE_ROLE, Dataset, DatasetError, Item, Skipped, Subset

PAIR_RULES = ("same_name", "suffix")
MAX_LISTED = 5  # problems quoted in the error when no pair is left


def _name(item: Item) -> str:
    return PurePath(item.source).name  # file names only: messages never show a server path


def _by_stem(items, strip: str = "") -> tuple[dict[str, Item], list[str]]:
    """{stem (minus `strip`): item} and a problem line for each stem that two files share (neither is used)."""
    found: dict[str, list[Item]] = {}
    for it in items:
        stem = PurePath(it.source).stem
        found.setdefault(stem[:len(stem) - len(strip)] if strip else stem, []).append(it)
    problems = [Skipped(", ".join(_name(i) for i in group), "the same name twice in one folder; keep one of them")
                for group in found.values() if len(group) > 1]
    return {stem: group[0] for stem, group in found.items() if len(group) == 1}, problems


def match_items(before, after, after_suffix: str = "") -> tuple[list[tuple[Item, Item]], list[Skipped]]:
    """[(after item, before item)] with equal stems (the after stem minus `after_suffix`) and equal pixel sizes, in
    the after folder's order, and the problems (missing partners, duplicates, size mismatches) in words."""
    before_map, problems = _by_stem(before)
    after_map, more = _by_stem(after, after_suffix)
    problems += more
    pairs = []
    for stem, a in after_map.items():
        b = before_map.get(stem)
        if b is None:
            problems.append(Skipped(_name(a), f"no 'before' image named {stem}.*; add it or remove this image"))
        elif (a.width, a.height) != (b.width, b.height):
            problems.append(Skipped(_name(a), f"{a.width}×{a.height} but its partner {_name(b)} is "
                                              f"{b.width}×{b.height}; a pair must have the same size (resize one)"))
        else:
            pairs.append((a, b))
    problems += [Skipped(_name(b), f"no 'after' image named {stem}{after_suffix}.*; add it or remove this image")
                 for stem, b in before_map.items() if stem not in after_map]
    return pairs, problems


def split_by_suffix(subset: Subset, suffix: str) -> tuple[list[Item], list[Item]]:
    """(before items, after items) of one folder: a stem ending in `suffix` is an "after" image."""
    if not suffix:
        raise DatasetError("The suffix rule needs a suffix such as '_after' (img.png pairs with img_after.png); "
                           "got an empty one.")
    after = [it for it in subset.items if PurePath(it.source).stem.endswith(suffix)]
    before = [it for it in subset.items if not PurePath(it.source).stem.endswith(suffix)]
    return before, after


def load_pairs(before: Subset, after: Subset | None, rule: str = "same_name", suffix: str = "_after",
               name: str = "pairs") -> tuple[Dataset, list[str]]:
    """(dataset, problem lines): pairs by `rule`, same_name (two subsets, one per folder) or suffix (every image in
    `before`; `after` unused); the "after" subset trains, the "before" subset is only ever a partner."""
    if rule not in PAIR_RULES:
        raise DatasetError(f"Unknown pair rule '{str(rule)[:40]}'; expected one of {', '.join(PAIR_RULES)}.")
    if rule == "suffix":
        before_items, after_items = split_by_suffix(before, suffix)
        pairs, problems = match_items(before_items, after_items, suffix)
        return _as_dataset(pairs, problems, before, before, name)
    if after is None:
        raise DatasetError("The same_name rule needs two folders (before and after); got only one. Set "
                           "after_folder, or use the suffix rule for one folder.")
    pairs, problems = match_items(before.items, after.items)
    return _as_dataset(pairs, problems, before, after, name)


def _as_dataset(pairs, skipped: list[Skipped], before: Subset, after: Subset, name: str) -> tuple[Dataset, list[str]]:
    problems = [f"{s.path}: {s.reason}" for s in skipped]
    if not pairs:
        listed = "; ".join(problems[:MAX_LISTED]) + (f" (and {len(problems) - MAX_LISTED} more)"
                                                     if len(problems) > MAX_LISTED else "")
        scanned = len(before.items) + (len(after.items) if after is not before else 0)
        raise DatasetError(f"No before/after pair found among {scanned} image(s): {listed or 'no images'}. "
                           "Pairs need the same file name in both folders (or name_after.png beside name.png with "
                           "the suffix rule) and the same pixel size.")
    # the "after" image carries the caption; an uncaptioned one borrows its partner's
    after_items = tuple(replace(a, caption=a.caption or b.caption) for a, b in pairs)
    before_items = tuple(b for _, b in pairs)
    subsets = (replace(after, name=name, items=after_items, role="train"),
               replace(before, name=f"{name}_before", items=before_items, role=BEFORE_ROLE))
    return Dataset(subsets, tuple(skipped), pairs=tuple((a.source, b.source) for a, b in pairs)), problems
