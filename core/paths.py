"""Where Atelier may read and write: user-supplied paths resolved strictly inside allowed roots.

ComfyUI listens on the network and every widget value arrives through POST /prompt, so a path from the graph is
untrusted. Nothing here knows ComfyUI: the nodes pass in the roots (input/, the `datasets` folder type, roots the
administrator configured) and this module refuses anything that escapes them (`..`, absolute, drive or UNC paths,
symlinks pointing outside).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

ROOTS_ENV = "ATELIER_DATASET_ROOTS"
HOW_TO_ADD_ROOT = (
    "An administrator can add a root with a `datasets:` entry in ComfyUI's extra_model_paths.yaml or with the "
    f"{ROOTS_ENV} environment variable (paths separated by '{os.pathsep}'), then restart ComfyUI."
)


class PathRefused(ValueError):
    """A user-supplied path that is malformed, escapes its root, or does not exist."""


@dataclass(frozen=True)
class Root:
    label: str  # how users name it in the graph: "input", "datasets", ...
    path: Path

    @property
    def real(self) -> Path:
        return Path(os.path.realpath(self.path))


def roots_from_env(environ=os.environ) -> list[Root]:
    """Extra dataset roots from the administrator's environment variable (labelled "datasets")."""
    raw = environ.get(ROOTS_ENV, "")
    return [Root("datasets", Path(p).expanduser()) for p in raw.split(os.pathsep) if p.strip()]


def describe_roots(roots: list[Root]) -> str:
    return ", ".join(f"{r.label} ({r.path})" for r in roots) or "none"


def check_relative(user_path: str) -> str:
    """Validates a relative path typed in the graph; returns it with '/' separators ('' means the root itself)."""
    if not isinstance(user_path, str):
        raise PathRefused(f"Expected a relative path as text, got {type(user_path).__name__}.")
    if "\x00" in user_path:
        raise PathRefused("Path contains a NUL character; type a plain relative folder name.")
    text = user_path.strip().replace("\\", "/")
    if text.startswith("//") or re.match(r"^[A-Za-z]:", text):
        raise PathRefused(f"'{user_path}' is a drive or network (UNC) path; only paths relative to an allowed root "
                          "are accepted.")
    if text.startswith("/") or os.path.isabs(text):
        raise PathRefused(f"'{user_path}' is an absolute path; only paths relative to an allowed root are accepted.")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"'{user_path}' contains '..'; only paths inside an allowed root are accepted.")
    return "/".join(parts)


def is_inside(path: str | Path, root: str | Path) -> bool:
    """True when the real path of `path` equals or lies under the real path of `root` (symlinks followed)."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def resolve_inside(root: Root, relative: str) -> Path:
    """The real path of `relative` under `root`, refused when it (or a symlink on the way) leaves the root."""
    rel = check_relative(relative)
    candidate = root.path / rel if rel else root.path
    real = Path(os.path.realpath(candidate))
    if not is_inside(real, root.path):
        raise PathRefused(f"'{root.label}/{rel}' resolves to '{real}', outside its root '{root.real}' (symlinks are "
                          "followed and may not leave the root).")
    return real


def resolve_folder(spec: str, roots: list[Root]) -> tuple[Path, Root]:
    """Resolves '<root label>/<relative path>' (as offered in the folder dropdown) to an existing folder in a root."""
    text = check_relative(spec)
    label, _, rel = text.partition("/")
    matching = [r for r in roots if r.label == label]
    if not matching:
        raise PathRefused(f"Folder '{spec}' does not start with an allowed root. Allowed roots: "
                          f"{describe_roots(roots)}. {HOW_TO_ADD_ROOT}")
    looked = []
    for root in matching:
        path = resolve_inside(root, rel)
        if path.is_dir():
            return path, root
        looked.append(str(root.path / rel))
    raise PathRefused(f"Folder '{spec}' does not exist (looked in: {', '.join(looked)}). Create it, or pick one from "
                      "the folder list.")


def list_folders(roots: list[Root], depth: int = 2, limit: int = 1000) -> list[str]:
    """'<label>/<relative>' names of the folders under each root, `depth` levels down, hidden ones skipped."""
    found: set[str] = set()
    for root in roots:
        if not root.path.is_dir():
            continue
        stack = [(root.path, "", 0)]
        while stack and len(found) < limit:
            folder, rel, level = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue  # unreadable folder: it simply is not offered
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                sub = f"{rel}/{entry.name}" if rel else entry.name
                if not is_inside(entry.path, root.path):
                    continue  # a symlink leading out of the root is never offered
                found.add(f"{root.label}/{sub}")
                if level + 1 < depth:
                    stack.append((Path(entry.path), sub, level + 1))
    return sorted(found, key=natural_key)


def safe_name(name: str, what: str = "name") -> str:
    """A single file or folder name for writing: no separators, no '..', no control characters, not empty."""
    text = (name or "").strip()
    if not text or text in (".", "..") or re.search(r"[\\/\x00-\x1f]", text) or ":" in text:
        raise PathRefused(f"Invalid {what} '{name}': use a plain name without '/', '\\', ':', '..' or control "
                          "characters.")
    return text


def natural_key(text: str) -> list:
    """Sort key that orders 'epoch-2' before 'epoch-10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]
