"""Caption editing as pure functions on tag lists: the operations caption guides ask for, one function each.

Nothing here knows ComfyUI or touches files. A caption is a comma-separated tag list ("1girl, blonde hair,
smile"); every operation takes a list of tags and returns a new list, so operations compose and nothing mutates
its input. Datasets apply them per item (`apply_to_dataset`), which also records a before → after diff.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable

from .caption_text import TAG_SEPARATOR, caption_size_problem
from .dataset import DatasetError, map_subsets
from .paths import base_name

MATCH_MODES = ("exact", "wildcard", "regex")
POSITIONS = ("start", "end")
SORT_ORDERS = ("alphabetical", "keep")
CLIP_TOKEN_BUDGET = 75  # CLIP's 77-token context minus the start and end tokens
MAX_PATTERNS = 1_000  # wildcard and regex patterns are tried one by one against every tag: their number is bounded


def split_tags(caption: str) -> list[str]:
    """'a, b,, c ' -> ['a', 'b', 'c']: comma-separated tags, blanks dropped, escaped commas ('\\,') kept in a tag."""
    parts = TAG_SEPARATOR.split(caption or "")
    return [p.strip() for p in parts if p.strip()]


def join_tags(tags: list[str]) -> str:
    """['a', 'b'] -> 'a, b': the one way a tag list is written back into a caption."""
    return ", ".join(tags)


def _matcher(patterns: list[str], mode: str) -> Callable[[str], bool]:
    """A predicate for tags matching any pattern: exact (case-insensitive), shell wildcard, or regular expression."""
    if mode not in MATCH_MODES:
        raise ValueError(f"Unknown match mode '{mode}'; expected one of {', '.join(MATCH_MODES)}.")
    if mode == "exact":
        wanted = {p.strip().lower() for p in patterns}
        return lambda tag: tag.lower() in wanted
    if len(patterns) > MAX_PATTERNS:
        raise ValueError(f"Got {len(patterns):,} {mode} patterns; at most {MAX_PATTERNS:,} are allowed (each one is "
                         "tried against every tag). Use match mode 'exact' for long tag lists, or combine patterns.")
    if mode == "wildcard":
        return lambda tag: any(fnmatch.fnmatchcase(tag.lower(), p.strip().lower()) for p in patterns)
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p.strip(), re.IGNORECASE))
        except re.error as e:
            raise ValueError(f"Invalid regular expression '{p}': {e}. Escape special characters such as '(' with "
                             "a backslash, or use match mode 'exact'.") from None
    return lambda tag: any(c.fullmatch(tag) for c in compiled)


def parse_tag_list(text: str) -> list[str]:
    """Patterns or tags typed in a widget: separated by commas (not '\\,', as in captions) or new lines."""
    return [tag for line in (text or "").splitlines() for tag in split_tags(line)]


def remove_tags(tags: list[str], patterns: list[str], mode: str = "exact") -> list[str]:
    """Drops tags matching any pattern (e.g. the hair and eye tags a character LoRA must memorise)."""
    if not patterns:
        return list(tags)
    match = _matcher(patterns, mode)
    return [t for t in tags if not match(t)]


def keep_only_tags(tags: list[str], patterns: list[str], mode: str = "exact") -> list[str]:
    """Keeps only tags matching a pattern (the inverse of remove_tags)."""
    match = _matcher(patterns, mode)
    return [t for t in tags if match(t)]


def parse_replace_map(text: str) -> list[tuple[str, str]]:
    """'old => new' per line (or 'old = new'); an empty right side removes the tag."""
    pairs = []
    for n, line in enumerate((text or "").splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continue
        sep = "=>" if "=>" in line else "=" if "=" in line else None
        if sep is None:
            raise ValueError(f"Replace map line {n} ('{line.strip()}') has no '=>'; write one 'old => new' per line.")
        old, new = line.split(sep, 1)
        if not old.strip():
            raise ValueError(f"Replace map line {n} ('{line.strip()}') has nothing before '{sep}'.")
        pairs.append((old.strip(), new.strip()))
    return pairs


def replace_tags(tags: list[str], mapping: list[tuple[str, str]]) -> list[str]:
    """Renames tags (case-insensitive whole-tag match); a mapping to '' removes; a new tag may hold several,
    comma-separated."""
    lookup = {old.lower(): new for old, new in mapping}
    out = []
    for t in tags:
        if t.lower() in lookup:
            out += split_tags(lookup[t.lower()])
        else:
            out.append(t)
    return dedupe_tags(out)


def add_tags(tags: list[str], new: list[str], position: str = "end") -> list[str]:
    """Adds tags not already present, at the start or the end (e.g. 'realistic' on every image)."""
    if position not in POSITIONS:
        raise ValueError(f"Unknown position '{position}'; expected one of {', '.join(POSITIONS)}.")
    present = {t.lower() for t in tags}
    missing = [t for t in new if t.lower() not in present]
    return (missing + list(tags)) if position == "start" else (list(tags) + missing)


def move_to_front(tags: list[str], first: list[str]) -> list[str]:
    """Trigger words first, in the given order (added if absent), the rest after: what keep_tokens then protects."""
    firsts = {t.lower() for t in first}
    return list(first) + [t for t in tags if t.lower() not in firsts]


def dedupe_tags(tags: list[str]) -> list[str]:
    """Drops repeated tags (case-insensitive), keeping the first occurrence."""
    seen, out = set(), []
    for t in tags:
        if t.lower() not in seen:
            seen.add(t.lower())
            out.append(t)
    return out


def sort_tags(tags: list[str], keep_first: int = 0) -> list[str]:
    """Alphabetical order after the first `keep_first` tags (trigger words stay in front)."""
    return list(tags[:keep_first]) + sorted(tags[keep_first:], key=str.lower)


def lowercase_tags(tags: list[str]) -> list[str]:
    return [t.lower() for t in tags]


def strip_weights(tags: list[str]) -> list[str]:
    """'(smile:1.2)' -> 'smile', '((blue eyes))' -> 'blue eyes', '[hat]' -> 'hat'; escaped '\\(' parentheses stay."""
    out = []
    for t in tags:
        s = re.sub(r"(?<!\\)[()\[\]]", "", t)  # unescaped emphasis brackets
        s = re.sub(r":\s*-?\d+(\.\d+)?\s*$", "", s)  # trailing ':1.2' weight
        if s.strip():
            out.append(s.strip())
    return out


def truncate_to_budget(tags: list[str], count_tokens: Callable[[str], int], budget: int = CLIP_TOKEN_BUDGET,
                       keep_first: int = 0, check: Callable[[], None] | None = None) -> list[str]:
    """Drops tags from the end until the joined caption fits `budget` tokens; the first `keep_first` always stay.

    The longest fitting prefix is found by galloping then bisecting (a prefix never has more tokens than a longer
    one), so a caption costs O(log n) tokenizations of prefixes at most twice the kept length, not one per dropped
    tag. `check()` runs before each tokenization (the node's interrupt check).
    """
    def fits(n: int) -> bool:
        if check:
            check()
        return count_tokens(join_tags(tags[:n])) <= budget

    lo = min(keep_first, len(tags))  # always kept
    if lo == len(tags):
        return list(tags)
    step, hi = 1, None
    while hi is None:  # gallop: lo fits (or is the floor); find a prefix length that does not fit
        probe = min(lo + step, len(tags))
        if not fits(probe):
            hi = probe
        elif probe == len(tags):
            return list(tags)
        else:
            lo, step = probe, step * 2
    while hi - lo > 1:  # invariant: prefix lo fits (or is the keep_first floor), prefix hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return list(tags[:lo])


def approx_token_count(text: str) -> int:
    """Rough CLIP token estimate without a tokenizer: words and punctuation marks, long words split per 6 letters."""
    count = 0
    for piece in re.findall(r"[A-Za-z]+|\d|[^\sA-Za-z\d]", text):
        count += max(1, (len(piece) + 5) // 6) if piece.isalpha() else 1
    return count


def tag_frequencies(captions: list[str]) -> list[tuple[str, int]]:
    """How many captions contain each tag, most frequent first (ties alphabetical)."""
    counts = Counter()
    for c in captions:
        counts.update({t.lower() for t in split_tags(c)})
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


@dataclass(frozen=True)
class CaptionFilter:
    """Which items an operation applies to: file-name glob and/or tags that must (or must not) be present."""

    filename_glob: str = ""
    has_tags: tuple[str, ...] = ()
    lacks_tags: tuple[str, ...] = ()

    def matches(self, source: str, tags: list[str]) -> bool:
        name = base_name(source)
        if self.filename_glob and not fnmatch.fnmatch(name.lower(), self.filename_glob.lower()):
            return False
        present = {t.lower() for t in tags}
        if any(t.lower() not in present for t in self.has_tags):
            return False
        return not any(t.lower() in present for t in self.lacks_tags)


def caption_diff(before: list[tuple[str, str]], after: list[tuple[str, str]], limit: int = 20) -> str:
    """'file: before → after' lines for the captions that changed (first `limit`), plus a count."""
    changed = [(src, a, b) for (src, a), (_, b) in zip(before, after) if a != b]
    lines = [f"{len(changed)} of {len(before)} captions change"]
    for src, a, b in changed[:limit]:
        name = base_name(src)
        tags_a, tags_b = split_tags(a), split_tags(b)
        lower_a, lower_b = {t.lower() for t in tags_a}, {t.lower() for t in tags_b}  # built once: linear diff
        removed = [t for t in tags_a if t.lower() not in lower_b]
        added = [t for t in tags_b if t.lower() not in lower_a]
        detail = "; ".join(x for x in (("-" + ", -".join(removed)) if removed else "",
                                       ("+" + ", +".join(added)) if added else "") if x) or "reordered"
        lines.append(f"{name}: {detail}\n    before: {a}\n    after:  {b}")
    if len(changed) > limit:
        lines.append(f"… and {len(changed) - limit} more")
    return "\n".join(lines)


def apply_to_dataset(dataset, op: Callable[[list[str]], list[str]], where: CaptionFilter | None = None,
                     subsets: list[str] | None = None, on_progress: Callable[[int], None] | None = None):
    """A new dataset with `op` applied to the tags of each matching item, and the diff text of what changed.

    `on_progress(done)` runs after each item (the node's progress bar and interrupt check). An edit that makes a
    caption longer than the caption limits is refused, naming the file.
    """
    before, after = [], []

    def edit(subset):
        items = []
        for it in subset.items:
            tags = split_tags(it.caption)
            new = join_tags(op(tags)) if where is None or where.matches(it.source, tags) else it.caption
            problem = caption_size_problem(new) if new != it.caption else None
            if problem:
                name = base_name(it.source)
                raise DatasetError(f"This edit would make the caption of '{name}' too long: {problem}. Add fewer "
                                   "tags, or prune the caption first.")
            if on_progress:
                on_progress(len(before) + 1)
            before.append((it.source, it.caption))
            after.append((it.source, new))
            items.append(replace(it, caption=new) if new != it.caption else it)
        return replace(subset, items=tuple(items))

    out = map_subsets(dataset, subsets, edit)
    return out, caption_diff(before, after)
