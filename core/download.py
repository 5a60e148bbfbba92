"""Checked downloads: one file over http(s), sha256-verified, bounded, interruptible, atomic. Nothing here knows
ComfyUI.

The bytes stream into a hidden temp file beside the target (core.temps naming), are hashed on the way, and the temp
is renamed onto the target only when the sha256 matches; any failure (wrong checksum, too large, stopped, network
error) removes the temp, so a target either does not exist or holds exactly the expected bytes. Only http and https
URLs are fetched, and a redirect may not change to another scheme or from https down to http.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from .paths import file_mode_for
from .temps import remove_stale_temps, temp_path

ALLOWED_SCHEMES = ("http", "https")
CHUNK_BYTES = 1 << 20  # 1 MiB per read: progress and the stop check run once per chunk
SHA256_RE = re.compile(r"[0-9a-f]{64}")


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


def download_file(url: str, dest: Path, sha256: str, *, timeout: float, max_bytes: int,
                  on_progress: Callable[[int, int | None], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Path:
    """Downloads `url` to `dest` through a hidden temp file, renaming it into place only when its sha256 equals
    `sha256`; at most `max_bytes`, checking `should_stop()` and reporting `on_progress(done, total)` per chunk."""
    check_url(url)
    expected = check_sha256(sha256)
    if max_bytes <= 0 or timeout <= 0:
        raise DownloadError(f"max_bytes and timeout must be positive, got {max_bytes} and {timeout}.")
    dest = Path(dest)
    name = dest.name
    remove_stale_temps(dest.parent, name)  # leftovers of a killed earlier download of the same file
    tmp = temp_path(dest)
    digest = hashlib.sha256()
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
                    out.write(chunk)
                    if on_progress is not None:
                        on_progress(done, total)
            if total is not None and done != total:
                raise DownloadError(f"'{name}' arrived incomplete: {done:,} of {total:,} bytes; nothing was kept. "
                                    "Run again.")
        got = digest.hexdigest()
        if got != expected:
            raise DownloadError(f"'{name}' failed its checksum: expected sha256 {expected}, got {got} "
                                f"({done:,} bytes); it was not kept. The file on the server differs from the one "
                                "configured: check the base URL, or update the checksum if the model was updated.")
        os.chmod(tmp, file_mode_for(dest))  # the umask's mode (or the replaced file's), never the temp's 0600
        os.replace(tmp, dest)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return dest


def _length(response) -> int | None:
    """The Content-Length the server announced, or None when absent or malformed."""
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None and int(value) >= 0 else None
    except ValueError:
        return None

