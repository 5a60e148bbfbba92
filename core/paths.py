"""Where Atelier may read and write: the one path policy every file open and every write goes through.

ComfyUI listens on the network and every widget value arrives through POST /prompt, so a path from the graph is
untrusted. Nothing here knows ComfyUI: the nodes pass in the roots (input/, the `datasets` folder type, roots the
administrator configured, output/, the model folders) and this module refuses anything that escapes them (`..`,
absolute, drive or UNC paths, symlinks pointing outside).

Checks happen when a file is opened, not only when its folder is chosen: `open_inside` resolves the path, checks the
real path against the root, opens it without following a final symlink, then asks the kernel which file the handle
really is, so a symlink swapped in between the check and the open cannot lead outside. Writes go through
`atomic_write_bytes`, which keeps the umask's permissions (or the replaced file's mode). Messages name files by
their place under a root ("input/ds/a.txt"), never by an absolute server path.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .temps import remove_stale_temps, temp_path

ROOTS_ENV = "ATELIER_DATASET_ROOTS"
NONE = "(none)"  # the dropdown entry meaning "no file" (no LoRA, no state, no checkpoint)
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
    """The roots by label only: a network client is never told where they are on the server's disk."""
    return ", ".join(dict.fromkeys(r.label for r in roots)) or "none"


def base_name(name: str) -> str:
    """The last part of a path or a listed name with sub-folders, either separator: 'sub\\a.png' -> 'a.png'."""
    return re.split(r"[\\/]", str(name).rstrip("/\\"))[-1]


def shown(path: str | Path, roots: list[Root] | None = None) -> str:
    """A path as a message may show it: '<root label>/<relative>' when it lies under one of `roots` (its real path
    or as written), else just the file's name. Never the server's absolute path."""
    text = os.path.abspath(os.fspath(path)) if os.path.isabs(os.fspath(path)) else os.fspath(path)
    for root in roots or []:
        for base in (os.path.abspath(root.path), os.fspath(root.real)):
            if text == base:
                return root.label
            if text.startswith(base.rstrip(os.sep) + os.sep):
                return f"{root.label}/{text[len(base.rstrip(os.sep)) + 1:]}".replace(os.sep, "/")
    return os.path.basename(text.rstrip("/\\")) if os.path.isabs(text) else text


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
        raise PathRefused(f"'{root.label}/{rel}' leads outside its root '{root.label}' through a symlink (symlinks "
                          "are followed and may not leave the root); replace the link with the files themselves.")
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
        looked.append(f"{root.label}/{rel}")
    raise PathRefused(f"Folder '{spec}' does not exist (looked in: {', '.join(dict.fromkeys(looked))}). Create it, "
                      "or pick one from the folder list.")


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


MAX_NAME_CHARS = 120  # file names we create: well under every filesystem's 255-byte limit, with room for suffixes
MAX_NAME_BYTES = 200  # the same limit in UTF-8 bytes, leaving room for suffixes such as '-000001.safetensors'
GLOB_CHARS = "*?[]"
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def _unsafe_char(ch: str) -> bool:
    """Control, format (bidi overrides, zero-width) and separator characters that make a name lie about itself."""
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Co", "Cs") or ch in "\\/:" + GLOB_CHARS + '"<>|'


def quoted(text: str, limit: int = 60) -> str:
    """A user value as a message may quote it: shortened, control characters escaped."""
    text = str(text)
    short = text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"
    return "".join(ch if not unicodedata.category(ch).startswith("C") else ascii(ch)[1:-1] for ch in short)


def safe_name(name: str, what: str = "name") -> str:
    """A single file or folder name for writing: no separators, '..', glob, control or bidi characters, no Windows
    reserved name, at most MAX_NAME_CHARS characters, not empty."""
    if not isinstance(name, str):
        raise PathRefused(f"Invalid {what}: expected text, got {type(name).__name__}.")
    text = name.strip()
    rule = (f"use a plain name of at most {MAX_NAME_CHARS} characters without '/', '\\', ':', '*', '?', '[', ']', "
            "'..' or control characters")
    if not text or text in (".", ".."):
        raise PathRefused(f"Invalid {what} '{quoted(name)}': {rule}.")
    if len(text) > MAX_NAME_CHARS or len(text.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise PathRefused(f"Invalid {what}: it is {len(text):,} characters ({len(text.encode('utf-8', 'replace')):,} "
                          f"bytes) long; {rule} (and {MAX_NAME_BYTES} bytes).")
    bad = [ch for ch in text if _unsafe_char(ch)]
    if bad:
        raise PathRefused(f"Invalid {what} '{quoted(name)}': it contains {ascii(bad[0])}; {rule}.")
    if text.split(".")[0].upper() in WINDOWS_RESERVED or text.endswith("."):
        raise PathRefused(f"Invalid {what} '{quoted(name)}': Windows reserves that name; {rule}.")
    return text


def natural_key(text: str) -> list:
    """Sort key that orders 'epoch-2' before 'epoch-10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


# ---------------------------------------------------------------- opening and writing files


def _fd_path(fd: int) -> str | None:
    """The real path of an open file as the kernel sees it (Linux /proc), or None where that is not available."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def verify_fd(fd: int, expected_real: str | Path, what: str = "file") -> None:
    """Refuses an open handle that is not the file `expected_real` names (a symlink was swapped in meanwhile)."""
    expected = os.fspath(expected_real)
    actual = _fd_path(fd)
    if actual is not None:
        same = actual == expected
    else:  # no /proc: compare identities instead
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(expected, follow_symlinks=False))
        except OSError:
            same = False
    if not same:
        raise PathRefused(f"The {what} '{os.path.basename(expected)}' changed while it was being opened (a symlink "
                          "was swapped in); it was not read. Check the folder for links.")


def resolve_in_roots(path: str | Path, roots: list[Root], what: str = "file") -> Path:
    """The real path of `path`, refused (naming it by its place under a root) unless it lies inside one of `roots`."""
    real = os.path.realpath(path)
    if not any(is_inside(real, r.path) for r in roots):
        raise PathRefused(f"The {what} '{shown(path, roots)}' lies outside the allowed roots "
                          f"({describe_roots(roots)}); symlinks are followed and may not leave their root, so it was "
                          "not opened. Move the file inside a root, or replace the link with the file itself.")
    return Path(real)


def open_inside(path: str | Path, roots: list[Root], what: str = "file", flags: int = os.O_RDONLY) -> int:
    """An OS file descriptor for `path`, opened only if its real path lies inside one of `roots` and still does once
    open (no final symlink followed, the handle's own path re-checked). The caller closes it."""
    real = resolve_in_roots(path, roots, what)
    return open_resolved(real, what, flags)


def open_resolved(real: str | Path, what: str = "file", flags: int = os.O_RDONLY) -> int:
    """Opens a path that is already a real path (no symlinks in it), refusing if that stopped being true."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(real, flags | nofollow | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        if nofollow and e.errno == getattr(__import__("errno"), "ELOOP", -1):
            raise PathRefused(f"The {what} '{os.path.basename(os.fspath(real))}' became a symlink while it was being "
                              "opened; it was not read.") from None
        raise
    try:
        verify_fd(fd, real, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


class FileTooLarge(ValueError):
    """A text file over the size a reader accepts."""


def read_bytes_inside(path: str | Path, roots: list[Root], what: str = "file", limit: int | None = None) -> bytes:
    """The bytes of `path`, read through open_inside; refused past `limit` bytes without reading the rest."""
    fd = open_inside(path, roots, what)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise PathRefused(f"The {what} '{shown(path, roots)}' is not a regular file; it was not read.")
        data = f.read(limit + 1) if limit is not None else f.read()
    if limit is not None and len(data) > limit:
        raise FileTooLarge(f"The {what} '{shown(path, roots)}' is larger than {limit:,} bytes; it was not read. "
                           "Shorten it, or remove it from the folder.")
    return data


def make_folder_inside(folder: str | Path, roots: list[Root], what: str = "folder") -> Path:
    """Creates `folder` (and its parents) and returns its real path, refusing when it, or a link on the way, lies
    outside `roots` — checked after creating, so a pre-planted symlinked folder is caught."""
    folder = Path(folder)
    resolve_in_roots(folder.parent if not folder.exists() else folder, roots, what)
    folder.mkdir(parents=True, exist_ok=True)
    return resolve_in_roots(folder, roots, what)


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (changing it is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode_for(path: str | Path, default: int = 0o666) -> int:
    """The mode a file written at `path` should get: the replaced file's own mode, else `default` less the umask (as
    for any new file: ComfyUI's own outputs follow the umask)."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return default & ~current_umask()


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Writes through a hidden temp file in the same folder, then renames: readers never see a half-written file.
    The file gets the replaced file's mode or the umask's (never the 0600 of a temp file); the target itself is never
    followed if it is a symlink (the link is replaced, not what it points to). Temps a killed earlier write of the
    same name left behind are removed first."""
    path = Path(path)
    if mode is None:  # a symlink's target is not ours to copy a mode from: a new file's mode then
        mode = 0o666 & ~current_umask() if path.is_symlink() else file_mode_for(path)
    remove_stale_temps(path.parent, path.name)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
