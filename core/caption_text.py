"""Caption text hygiene: size limits, control characters, and the allow-lists of caption extensions and encodings.

Nothing here knows ComfyUI or touches files. Every caption that enters a dataset (a sidecar file, a fixed caption,
captions from another node) passes through `check_caption_size` and `clean_caption`, so later work (tag edits,
tokenizing, training) is bounded and never sees invisible or terminal-control characters.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

MAX_CAPTION_CHARS = 20_000  # ~40× a long natural-language caption; CLIP sees 75 tokens of it
MAX_CAPTION_TAGS = 2_000  # a WD14 caption has 20-60 tags; kohya's keep_tokens/shuffle work on a few hundred at most
# A sidecar larger than this cannot hold MAX_CAPTION_CHARS characters in any allowed encoding (4 bytes per character
# at most, plus a byte-order mark): it is refused from its size, without reading it.
MAX_CAPTION_BYTES = 4 * MAX_CAPTION_CHARS + 4

CAPTION_EXTENSIONS = (".txt", ".caption", ".tags")  # kohya reads .caption by default; most tools write .txt
# Real text encodings only: codecs such as punycode, rot13, base64 or zlib are refused.
CAPTION_ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "ascii", "latin-1", "iso8859-15",
                     "cp1250", "cp1251", "cp1252", "shift_jis", "cp932", "euc_jp", "gbk", "gb18030", "big5",
                     "euc_kr", "cp949", "koi8_r")

TAG_SEPARATOR = re.compile(r"(?<!\\),")  # a comma not escaped as '\,': the one tag rule
_WHITESPACE_CONTROLS = {"Zl", "Zp"}  # line and paragraph separators read as spaces, like a newline
_REMOVED = {"Cc", "Cf", "Cs"}  # controls (ESC, BEL), format characters (U+202E, U+200B), lone surrogates


class CaptionRefused(ValueError):
    """A caption or caption option that is refused; the message names it, the limit or list, and what to do."""


def check_caption_extension(extension: str) -> str:
    """'.txt', 'txt' or '.TXT' -> '.txt'; anything not in CAPTION_EXTENSIONS ('', '.', '../x', '.txt/x') is refused."""
    text = str(extension).strip().lower()
    ext = text if text.startswith(".") else "." + text
    if ext not in CAPTION_EXTENSIONS:
        raise CaptionRefused(f"caption_extension '{str(extension)[:40]}' is not allowed; use one of "
                             f"{', '.join(CAPTION_EXTENSIONS)}. Rename the caption files to one of these extensions.")
    return ext


def _codec_name(name: str) -> str | None:
    try:
        return codecs.lookup(name).name
    except (LookupError, TypeError, ValueError):
        return None


_ALLOWED_CODECS = {_codec_name(e) for e in CAPTION_ENCODINGS}


def check_caption_encoding(encoding: str) -> str:
    """The encoding name if it is one of CAPTION_ENCODINGS (any spelling Python knows, e.g. 'UTF8'), else refused."""
    text = str(encoding).strip()
    if _codec_name(text) not in _ALLOWED_CODECS:
        raise CaptionRefused(f"caption_encoding '{text[:40]}' is not an allowed text encoding; use one of "
                             f"{', '.join(CAPTION_ENCODINGS)} (utf-8 unless the files were saved otherwise).")
    return text


def count_tags(caption: str) -> int:
    """How many comma-separated tags a caption has (escaped commas '\\,' stay inside a tag), counted without a list."""
    return len(TAG_SEPARATOR.findall(caption)) + 1 if caption.strip() else 0


def caption_size_problem(caption: str) -> str | None:
    """Why a caption is too large to use (characters or tags over the limits), or None when it is fine."""
    if len(caption) > MAX_CAPTION_CHARS:
        return (f"caption has {len(caption):,} characters, over the limit of {MAX_CAPTION_CHARS:,}; shorten it "
                "(CLIP reads only the first ~75 tokens)")
    tags = count_tags(caption)
    if tags > MAX_CAPTION_TAGS:
        return (f"caption has {tags:,} tags, over the limit of {MAX_CAPTION_TAGS:,}; prune it (Tag Frequency shows "
                "which tags to drop)")
    return None


def check_caption_size(caption: str, what: str) -> str:
    """`caption` unchanged, or CaptionRefused naming `what` (e.g. "caption 3 of 10") with the limit."""
    problem = caption_size_problem(caption)
    if problem:
        raise CaptionRefused(f"{what}: {problem}.")
    return caption


def clean_caption(caption: str) -> tuple[str, list[str]]:
    """The caption without control and invisible format characters, and the names of what was removed.

    ESC, BEL, bidi overrides (U+202E), zero-width spaces (U+200B) and the like are dropped; tabs, newlines and line
    separators become spaces. A caption that needed no change is returned as it is (the common case is one C call).
    """
    if caption.isprintable():  # False for every Cc/Cf/Cs/Zl/Zp character (and for Zs other than ' ', kept below)
        return caption, []
    out, removed = [], []
    for ch in caption:
        category = unicodedata.category(ch)
        if category in _WHITESPACE_CONTROLS or (category == "Cc" and ch.isspace()):
            out.append(" ")  # tab, newline, vertical tab, form feed, U+0085, U+2028, U+2029
            if ch not in "\t\n\r":
                removed.append(_char_name(ch))
        elif category in _REMOVED:
            removed.append(_char_name(ch))
        else:
            out.append(ch)  # letters, marks, symbols, and non-breaking or wide spaces (real text)
    text = "".join(out)
    if text == caption:
        return caption, []
    return re.sub(r" {2,}", " ", text).strip(), list(dict.fromkeys(removed))


def _char_name(ch: str) -> str:
    name = unicodedata.name(ch, "") or {"\x1b": "ESC", "\x07": "BEL", "\x00": "NUL", "\x7f": "DEL"}.get(ch, "")
    return f"U+{ord(ch):04X}" + (f" {name}" if name else "")


def cleaning_note(cleaned: dict[str, list[str]], limit: int = 5) -> str | None:
    """One report line for the captions that had characters removed: how many, which files, which characters."""
    if not cleaned:
        return None
    chars = list(dict.fromkeys(c for names in cleaned.values() for c in names))
    files = list(cleaned)
    more = f" and {len(files) - limit} more" if len(files) > limit else ""
    return (f"{len(files)} caption(s) cleaned of control or invisible characters ({', '.join(chars[:6])}"
            f"{' …' if len(chars) > 6 else ''}): {', '.join(files[:limit])}{more}")


ENCODE_MAX_CHARS = 4_000  # far more text than 3 CLIP windows hold; bounds the tokenizer's work per caption
ENCODE_MAX_WINDOWS = 3  # 3 × 75 tokens: kohya's longest max_token_length (225); CLIP reads each window separately


def caption_for_encoder(caption: str, max_chars: int = ENCODE_MAX_CHARS) -> str:
    """The part of a caption worth tokenizing: at most `max_chars`, cut after the last whole tag that fits."""
    if len(caption) <= max_chars:
        return caption
    head = caption[:max_chars]
    cut = head.rfind(",")
    return head[:cut] if cut > 0 else head
