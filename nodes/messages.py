"""What a network client is shown: errors and reports that name files by their folder, never by server paths.

ComfyUI sends a node's exception text and its `ui` output to every client (the error dialog, /history). Core code
already names files by root label; this is the last line at the node boundary: every Atelier node's `execute` is
wrapped so that any absolute path left in an error, a ui text or a report output (which a Preview node shows) is
rewritten to '<folder label>/<relative>' for ComfyUI's own folders (input, output, models/<type>, ...) or to
'…/<file name>' for anything else. Captions and other data outputs pass through untouched.
"""

from __future__ import annotations

import functools
import os
import re

import folder_paths

from ..core.paths import roots_from_env

REPORT_OUTPUTS = ("report", "changes", "notes", "text", "table", "file")  # STRING outputs that describe, not carry data
# An absolute POSIX path of at least two parts, not inside a word or a URL ('http://x/y' stays as it is).
_ABSOLUTE = re.compile(r"(?<![\w/.~-])(?:/[^\s/'\"`;,()\[\]{}<>|]+){2,}/?")
# A Windows drive path: C:\x\y or C:/x/y.
_DRIVE = re.compile(r"(?<![\w])[A-Za-z]:[\\/](?:[^\s\\/'\"`;,()\[\]{}<>|]+[\\/])*[^\s\\/'\"`;,()\[\]{}<>|]*")


def _known_folders() -> list[tuple[str, str]]:
    """(absolute prefix, label) for ComfyUI's folders and the administrator's dataset roots, longest first."""
    pairs = [(folder_paths.get_input_directory(), "input"), (folder_paths.get_output_directory(), "output"),
             (folder_paths.get_temp_directory(), "temp"), (folder_paths.get_user_directory(), "user"),
             (folder_paths.models_dir, "models"), (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "custom_nodes/atelier")]
    for folder_type, (paths, _exts) in folder_paths.folder_names_and_paths.items():
        pairs += [(p, f"models/{folder_type}") for p in paths]
    pairs += [(os.fspath(r.path), "datasets") for r in roots_from_env()]
    pairs.append((folder_paths.base_path, "ComfyUI"))
    out = {}
    for path, label in pairs:
        for variant in (os.path.abspath(path), os.path.realpath(path)):
            if len(variant) > 1:
                out.setdefault(variant.rstrip("/\\"), label)
    return sorted(out.items(), key=lambda kv: -len(kv[0]))


def scrub(text: str) -> str:
    """`text` with every server path replaced by its folder label, or by '…/<name>' when it is in no known folder."""
    if not isinstance(text, str) or ("/" not in text and "\\" not in text):
        return text
    for prefix, label in _known_folders():
        text = re.sub(re.escape(prefix) + r"(?=[/\\]|\b|$)", label, text)
    text = _ABSOLUTE.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
    return _DRIVE.sub(lambda m: "…\\" + re.split(r"[\\/]", m.group(0).rstrip("\\/"))[-1], text)


def _scrub_exception(e: BaseException) -> None:
    """Rewrites an exception's message in place (its type and traceback stay as they are)."""
    if isinstance(e, OSError):
        for attr in ("filename", "filename2"):
            if isinstance(getattr(e, attr, None), str):
                setattr(e, attr, scrub(getattr(e, attr)))
    if e.args:
        e.args = tuple(scrub(a) if isinstance(a, str) else a for a in e.args)


def _scrub_ui(ui):
    if isinstance(ui, dict):
        return {k: _scrub_ui(v) for k, v in ui.items()}
    if isinstance(ui, list):
        return [_scrub_ui(v) for v in ui]
    return scrub(ui) if isinstance(ui, str) else ui


def guard_messages(node_cls):
    """Wraps `node_cls.execute` so its errors and ui texts name no server path; returns the class."""
    original = node_cls.__dict__["execute"].__func__
    outputs = [getattr(o, "id", None) for o in node_cls.define_schema().outputs or []]
    reports = [i for i, name in enumerate(outputs) if name in REPORT_OUTPUTS]

    @functools.wraps(original)
    def execute(cls, *args, **kwargs):
        try:
            out = original(cls, *args, **kwargs)
        except Exception as e:
            _scrub_exception(e)
            raise
        ui = getattr(out, "ui", None)
        if isinstance(ui, dict):
            out.ui = _scrub_ui(ui)
        values = getattr(out, "args", None)
        if reports and isinstance(values, tuple):
            out.args = tuple(scrub(v) if i in reports and isinstance(v, str) else v for i, v in enumerate(values))
        return out

    node_cls.execute = classmethod(execute)
    return node_cls
