"""Checked downloads: one file over http(s), sha256-verified, bounded, interruptible, atomic. Nothing here knows
ComfyUI.

The bytes stream into a hidden temp file beside the target (core.temps naming), are hashed on the way, and the temp
is renamed onto the target only when the sha256 matches; any failure (wrong checksum, too large, stopped, network
error) removes the temp, so a target either does not exist or holds exactly the expected bytes. Only http and https
URLs are fetched, and a redirect may not change to another scheme or from https down to http.

A file is checked by its sha256, or, where the source publishes none (a plain git file on Hugging Face), by its git
blob id: sha1(b"blob <size>\\0" + bytes), which pins both the bytes and their size. fetch_json reads a small JSON
answer (a checksum API) with the same URL rules, a size cap and a timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, NamedTuple

from .paths import file_mode_for
from .temps import remove_stale_temps, temp_path

ALLOWED_SCHEMES = ("http", "https")
CHUNK_BYTES = 1 << 20  # 1 MiB per read: progress and the stop check run once per chunk
SHA256_RE = re.compile(r"[0-9a-f]{64}")
GIT_OID_RE = re.compile(r"[0-9a-f]{40}")
MAX_JSON_BYTES = 1 << 20  # a checksum API's answer is a few hundred bytes; more is not an answer we expect


class GitBlob(NamedTuple):
    """A plain git file's object id (sha1 of b"blob <size>\\0" + bytes) and its size in bytes."""

    oid: str
    size: int


class DownloadError(ValueError):
    """A download refused or failed; nothing was left at the target."""


class DownloadStopped(DownloadError):
    """should_stop() asked the download to end; the partial file was removed."""


def check_url(url: str) -> str:
    """Refuses anything but an http(s) URL with a host (file:, ftp:, data: and friends never reach urllib)."""
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.hostname:
        raise DownloadError(f"Only http:// and https:// URLs with a host are downloaded, got '{_short(url)}'; "
                            "set the base URL to an http(s) address.")
    return str(url)


def check_sha256(sha256: str) -> str:
    """A sha256 as 64 lowercase hex digits (upper case accepted); refused otherwise, since nothing is fetched
    unchecked."""
    text = str(sha256 or "").strip().lower()
    if not SHA256_RE.fullmatch(text):
        raise DownloadError(f"Expected a sha256 checksum of 64 hex digits, got '{_short(sha256)}'; copy the file's "
                            "SHA256 from its download page (on Hugging Face: the file's page, 'SHA256:').")
    return text


def _short(text, limit: int = 80) -> str:
    """A value as a message may quote it: without user:password in a URL, shortened."""
    text = re.sub(r"//[^/@]*@", "//", str(text))  # never echo credentials embedded in a URL
    return text if len(text) <= limit else text[:limit] + "…"


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to http(s), and never from https down to plain http."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new = urllib.parse.urlsplit(newurl).scheme.lower()
        if new not in ALLOWED_SCHEMES or (old == "https" and new == "http"):
            raise DownloadError(f"The server redirected a {old} download to a {new or 'relative'} URL "
                                f"('{_short(newurl)}'); only http(s) redirects that keep https are followed.")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """An opener without file:/ftp:/data: handlers and with the checked redirect handler."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(),
                    _SameSchemeRedirects(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def check_git_blob(blob: GitBlob) -> GitBlob:
    """A git blob id as 40 lowercase hex digits with a non-negative size; refused otherwise."""
    oid = str(blob.oid or "").strip().lower()
    if not GIT_OID_RE.fullmatch(oid) or not isinstance(blob.size, int) or blob.size < 0:
        raise DownloadError(f"Expected a git blob id of 40 hex digits and a size in bytes, got '{_short(blob.oid)}' "
                            f"and {blob.size!r}; the checksum source answered something else.")
    return GitBlob(oid, blob.size)


def download_file(url: str, dest: Path, sha256: str | None, *, timeout: float, max_bytes: int,
                  git_blob: GitBlob | None = None, on_progress: Callable[[int, int | None], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> str:
    """Downloads `url` to `dest` through a hidden temp file, renaming it into place only when its sha256 equals
    `sha256` (or, with sha256=None, its git blob id equals `git_blob`); at most `max_bytes`, checking `should_stop()`
    and reporting `on_progress(done, total)` per chunk. Returns the placed file's sha256."""
    check_url(url)
    expected = check_sha256(sha256) if sha256 is not None or git_blob is None else None
    blob = check_git_blob(git_blob) if expected is None else None
    if max_bytes <= 0 or timeout <= 0:
        raise DownloadError(f"max_bytes and timeout must be positive, got {max_bytes} and {timeout}.")
    dest = Path(dest)
    name = dest.name
    remove_stale_temps(dest.parent, name)  # leftovers of a killed earlier download of the same file
    tmp = temp_path(dest)
    digest = hashlib.sha256()
    git_digest = hashlib.sha1(f"blob {blob.size}\0".encode()) if blob else None  # git hashes header + bytes
    try:
        try:
            response = _opener().open(urllib.request.Request(url, headers={"User-Agent": "atelier"}),
                                      timeout=timeout)
        except urllib.error.HTTPError as e:
            raise DownloadError(f"Downloading '{name}' failed: the server answered HTTP {e.code} ({e.reason}) for "
                                f"'{_short(url)}'. Check the base URL and the model name.") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"Downloading '{name}' failed: could not reach '{_short(url)}' ({reason}). Check the "
                                "network and the base URL, or place the file by hand.") from None
        with response:
            total = _length(response)
            if total is not None and total > max_bytes:
                raise DownloadError(f"'{name}' is {total:,} bytes, over the {max_bytes:,}-byte limit for this file; "
                                    "it was not downloaded. Check the URL points at the right file.")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            done = 0
            with os.fdopen(fd, "wb") as out:
                while True:
                    if should_stop is not None and should_stop():
                        raise DownloadStopped(f"Download of '{name}' was stopped after {done:,} bytes; nothing "
                                              "was kept. Run again to start over.")
                    try:
                        chunk = response.read(CHUNK_BYTES)
                    except OSError as e:  # timeouts and resets mid-stream
                        raise DownloadError(f"Downloading '{name}' broke off after {done:,} bytes ({e}); nothing "
                                            "was kept. Run again.") from None
                    if not chunk:
                        break
                    done += len(chunk)
                    if done > max_bytes:
                        raise DownloadError(f"'{name}' grew past the {max_bytes:,}-byte limit for this file; it was "
                                            "not kept. Check the URL points at the right file.")
                    digest.update(chunk)
                    if git_digest is not None:
                        git_digest.update(chunk)
                    out.write(chunk)
                    if on_progress is not None:
                        on_progress(done, total)
            if total is not None and done != total:
                raise DownloadError(f"'{name}' arrived incomplete: {done:,} of {total:,} bytes; nothing was kept. "
                                    "Run again.")
        got = digest.hexdigest()
        if expected is not None and got != expected:
            raise DownloadError(f"'{name}' failed its checksum: expected sha256 {expected}, got {got} "
                                f"({done:,} bytes); it was not kept. The file on the server differs from the one "
                                "configured: check the base URL, or update the checksum if the model was updated.")
        if git_digest is not None and (git_digest.hexdigest() != blob.oid or done != blob.size):
            raise DownloadError(f"'{name}' failed its checksum: expected git blob {blob.oid} ({blob.size:,} bytes), "
                                f"got {git_digest.hexdigest()} ({done:,} bytes); it was not kept. The file on the "
                                "server differs from the one its checksum source lists: check the base URL.")
        os.chmod(tmp, file_mode_for(dest))  # the umask's mode (or the replaced file's), never the temp's 0600
        os.replace(tmp, dest)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return got


def _length(response) -> int | None:
    """The Content-Length the server announced, or None when absent or malformed."""
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None and int(value) >= 0 else None
    except ValueError:
        return None



def fetch_json(url: str, form: dict[str, list[str] | str] | None = None, *, timeout: float, what: str):
    """The JSON answer of `url` (POSTing `form` url-encoded when given, as HTML forms do), at most MAX_JSON_BYTES;
    `what` names the answer in errors."""
    check_url(url)
    data = None if form is None else urllib.parse.urlencode(form, doseq=True).encode()
    request = urllib.request.Request(url, data=data, headers={"User-Agent": "atelier", "Accept": "application/json"})
    try:
        with _opener().open(request, timeout=timeout) as response:
            body = response.read(MAX_JSON_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"Asking for {what} failed: the server answered HTTP {e.code} ({e.reason}) for "
                            f"'{_short(url)}'. Check the API URL and the model name.") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"Asking for {what} failed: could not reach '{_short(url)}' ({reason}). Check the network "
                            "and the API URL, or place the files by hand.") from None
    if len(body) > MAX_JSON_BYTES:
        raise DownloadError(f"The answer with {what} from '{_short(url)}' is over {MAX_JSON_BYTES:,} bytes; expected "
                            "a short JSON list. Check the API URL.")
    try:
        return json.loads(body.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError is a ValueError too
        raise DownloadError(f"The answer with {what} from '{_short(url)}' is not JSON ({e}; it starts "
                            f"{body[:40]!r}). Check the API URL points at the Hugging Face API or a mirror of "
                            "it.") from None
