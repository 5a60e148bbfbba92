"""Checked downloads against a real HTTP server on loopback: the file arrives intact or nothing is left behind."""

import hashlib
import http.server
import json
import os
import threading
import urllib.parse

import pytest

from atelier.core import tagger_models as tm
from atelier.core.download import DownloadError, DownloadStopped, GitBlob, download_file

PAYLOAD = bytes(range(256)) * 4096 * 3  # 3 MiB: several 1 MiB chunks, so a stop can land mid-download
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    api: dict = {}  # paths-info route -> list of entries (answered filtered by the paths asked) or raw bytes
    asked: list = []  # (route, paths) of each API call, so a test can tell whether the API was asked

    def do_POST(self):  # noqa: N802 (http.server's name); the Hub API's paths-info, as huggingface_hub calls it
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        self.asked.append((self.path, form.get("paths", [])))
        answer = self.api.get(self.path)
        if answer is None:
            self.send_error(404)
            return
        if isinstance(answer, list):  # like the Hub: only the paths asked for, unknown ones left out
            answer = json.dumps([e for e in answer if e["path"] in form.get("paths", [])]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.startswith("/redirect-ftp"):
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/file.bin")
            self.end_headers()
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # keep test output quiet


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that stops reading mid-file (the stop and size tests) is expected here


@pytest.fixture(scope="module")
def server():
    httpd = QuietServer(("127.0.0.1", 0), Handler)
    Handler.files = {"/file.bin": PAYLOAD}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def leftovers(folder):
    return sorted(os.listdir(folder))


def test_download_arrives_intact_with_the_umask_mode(server, tmp_path):
    seen = []
    got = download_file(f"{server}/file.bin", tmp_path / "model.onnx", SHA, timeout=10, max_bytes=10 * 2**20,
                        on_progress=lambda done, total: seen.append((done, total)))
    dest = tmp_path / "model.onnx"
    assert got == SHA and dest.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["model.onnx"]
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and len(seen) >= 3
    umask = os.umask(0o022)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp's 0600


def test_wrong_checksum_is_refused_and_nothing_is_left(server, tmp_path):
    wrong = "0" * 64
    with pytest.raises(DownloadError) as e:
        download_file(f"{server}/file.bin", tmp_path / "model.onnx", wrong, timeout=10, max_bytes=10 * 2**20)
    assert f"expected sha256 {wrong}, got {SHA}" in str(e.value)
    assert "model.onnx" in str(e.value) and str(tmp_path) not in str(e.value)
    assert leftovers(tmp_path) == []


def test_wrong_checksum_keeps_an_existing_file_untouched(server, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"old")
    with pytest.raises(DownloadError):
        download_file(f"{server}/file.bin", tmp_path / "model.onnx", "1" * 64, timeout=10, max_bytes=10 * 2**20)
    assert (tmp_path / "model.onnx").read_bytes() == b"old" and leftovers(tmp_path) == ["model.onnx"]


def test_oversize_is_refused_before_writing(server, tmp_path):
    with pytest.raises(DownloadError, match=r"3,145,728 bytes, over the 1,000-byte limit"):
        download_file(f"{server}/file.bin", tmp_path / "x.bin", SHA, timeout=10, max_bytes=1000)
    assert leftovers(tmp_path) == []


def test_stop_mid_download_leaves_nothing(server, tmp_path):
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2  # after two chunks have been written

    with pytest.raises(DownloadStopped, match=r"stopped after 2,097,152 bytes; nothing was kept"):
        download_file(f"{server}/file.bin", tmp_path / "x.bin", SHA, timeout=10, max_bytes=10 * 2**20,
                      should_stop=should_stop)
    assert leftovers(tmp_path) == []


def test_an_exception_from_the_progress_callback_leaves_nothing(server, tmp_path):
    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled  # what ComfyUI's interrupt does from inside the progress update

    with pytest.raises(Cancelled):
        download_file(f"{server}/file.bin", tmp_path / "x.bin", SHA, timeout=10, max_bytes=10 * 2**20,
                      on_progress=cancel)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "data:,hello", "/relative/path",
                                 "http:///nohost"])
def test_only_http_urls_are_fetched(url, tmp_path):
    with pytest.raises(DownloadError, match="Only http:// and https:// URLs"):
        download_file(url, tmp_path / "x.bin", SHA, timeout=10, max_bytes=100)
    assert leftovers(tmp_path) == []


def test_a_redirect_to_another_scheme_is_refused(server, tmp_path):
    with pytest.raises(DownloadError, match="redirected a http download to a ftp URL"):
        download_file(f"{server}/redirect-ftp", tmp_path / "x.bin", SHA, timeout=10, max_bytes=100)
    assert leftovers(tmp_path) == []


def test_missing_file_and_bad_checksum_text_say_what_to_do(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{server}/nope.bin", tmp_path / "x.bin", SHA, timeout=10, max_bytes=100)
    with pytest.raises(DownloadError, match="64 hex digits, got 'abc'"):
        download_file(f"{server}/file.bin", tmp_path / "x.bin", "abc", timeout=10, max_bytes=100)
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- the tagger registry


def registry(**sums):
    return {tm.ALLOW_ENV: "1", tm.REGISTRY_ENV: __import__("json").dumps(sums)}


def test_downloads_are_off_unless_enabled():
    both = {"model.onnx": "a" * 64, "selected_tags.csv": "b" * 64}
    assert tm.downloadable({}) == []
    assert tm.downloadable({tm.REGISTRY_ENV: '{"wd-vit-tagger-v3": ' + json.dumps(both) + "}"}) == []
    assert tm.downloadable({tm.ALLOW_ENV: "1"}) == list(tm.STANDARD_MODELS)  # checksums from the Hub API
    assert tm.downloadable(registry(**{"wd-vit-tagger-v3": both, "my-tagger": both})) == [*tm.STANDARD_MODELS,
                                                                                           "my-tagger"]
    with pytest.raises(DownloadError, match="downloads are off") as e:
        tm.plan("wd-vit-tagger-v3", {})
    assert "huggingface.co/SmilingWolf/wd-vit-tagger-v3" in str(e.value) and tm.ALLOW_ENV in str(e.value)
    with pytest.raises(DownloadError, match="not one of the standard models .* no sha256 in ATELIER_TAGGER_REGISTRY"):
        tm.plan("my-tagger", registry(**{"wd-vit-tagger-v3": both}))  # no API for a model that is not SmilingWolf's


def test_plan_builds_urls_from_the_base_url():
    both = {"model.onnx": "A" * 64, "selected_tags.csv": "b" * 64}
    job = tm.plan("wd-vit-tagger-v3", registry(**{"wd-vit-tagger-v3": both}))
    assert job.files["model.onnx"] == (
        "https://huggingface.co/SmilingWolf/wd-vit-tagger-v3/resolve/main/model.onnx", "a" * 64, None)
    env = dict(registry(**{"wd-vit-tagger-v3": both}), **{tm.BASE_URL_ENV: "http://127.0.0.1:9/mirror"})
    assert tm.plan("wd-vit-tagger-v3", env).files["selected_tags.csv"][0] == (
        "http://127.0.0.1:9/mirror/wd-vit-tagger-v3/selected_tags.csv")
    with pytest.raises(DownloadError, match="Only http"):
        tm.plan("wd-vit-tagger-v3", dict(env, **{tm.BASE_URL_ENV: "file:///srv/models/{name}/"}))


@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    ("[1]", "JSON object of models"),
    ('{"m": {"model.onnx": "' + "a" * 64 + '"}}', "exactly the sha256 of selected_tags.csv and model.onnx"),
    ('{"m": {"model.onnx": "xyz", "selected_tags.csv": "' + "a" * 64 + '"}}', "64 hex digits"),
    ('{"../m": {"model.onnx": "a", "selected_tags.csv": "b"}}', "Invalid model name"),
])
def test_a_malformed_registry_is_refused_with_its_reason(raw, message):
    with pytest.raises(ValueError, match=message):
        tm.configured_checksums({tm.REGISTRY_ENV: raw})


def test_fetch_model_places_both_files_or_none(server, tmp_path):
    csv = b"tag_id,name,category,count\n0,general,9,1\n"
    Handler.files.update({"/m/model.onnx": PAYLOAD, "/m/selected_tags.csv": csv})
    good = {"model.onnx": SHA, "selected_tags.csv": hashlib.sha256(csv).hexdigest()}
    env = dict(registry(m=good), **{tm.BASE_URL_ENV: server + "/{name}/"})
    folder = tmp_path / "m"
    folder.mkdir()
    bad = dict(registry(m=dict(good, **{"model.onnx": "c" * 64})), **{tm.BASE_URL_ENV: server + "/{name}/"})
    with pytest.raises(DownloadError, match="failed its checksum"):
        tm.fetch_model(tm.plan("m", bad), folder)
    assert leftovers(folder) == []  # the tag list that did arrive was taken back: no half model
    tm.fetch_model(tm.plan("m", env), folder)
    assert leftovers(folder) == ["model.onnx", "selected_tags.csv"]
    assert (folder / "model.onnx").read_bytes() == PAYLOAD and (folder / "selected_tags.csv").read_bytes() == csv


# ---------------------------------------------------------------- checksums from the Hub API (no registry)

CSV = b"tag_id,name,category,count\n0,general,9,1\n"


def git_blob_id(data):
    """What git (and the Hub's 'oid' of a plain file) names a blob: sha1 of its header and bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def paths_info(onnx_sha=SHA, csv_oid=None, csv_size=len(CSV)):
    """A paths-info answer shaped like the Hub's: model.onnx an LFS file, selected_tags.csv a plain git file."""
    return [
        {"type": "file", "path": "model.onnx", "size": len(PAYLOAD), "oid": "9" * 40,
         "lfs": {"oid": onnx_sha, "size": len(PAYLOAD), "pointerSize": 134}},
        {"type": "file", "path": "selected_tags.csv", "size": csv_size, "oid": csv_oid or git_blob_id(CSV)},
    ]


def hub(server, name, answer):
    """Serves `name`'s two files and `answer` on its paths-info route; the environment that points there."""
    Handler.files.update({f"/{name}/model.onnx": PAYLOAD, f"/{name}/selected_tags.csv": CSV})
    Handler.api[f"/api/models/SmilingWolf/{name}/paths-info/main"] = answer
    return {tm.ALLOW_ENV: "1", tm.BASE_URL_ENV: server + "/{name}/", tm.API_URL_ENV: server}


def test_without_a_registry_the_api_checksums_are_used(server, tmp_path):
    env = hub(server, "wd-vit-tagger-v3", paths_info())
    Handler.asked.clear()
    job = tm.plan("wd-vit-tagger-v3", env)
    assert Handler.asked == [("/api/models/SmilingWolf/wd-vit-tagger-v3/paths-info/main", list(tm.FILES))]
    assert job.files["model.onnx"].sha256 == SHA  # the LFS oid is the content's sha256
    assert job.files["selected_tags.csv"].git_blob == (git_blob_id(CSV), len(CSV))
    placed = tm.fetch_model(job, tmp_path)
    assert placed == {"model.onnx": SHA, "selected_tags.csv": hashlib.sha256(CSV).hexdigest()}
    assert leftovers(tmp_path) == ["model.onnx", "selected_tags.csv"]
    assert (tmp_path / "model.onnx").read_bytes() == PAYLOAD and (tmp_path / "selected_tags.csv").read_bytes() == CSV


@pytest.mark.parametrize("answer, message", [
    (paths_info(onnx_sha="0" * 64), "'model.onnx' failed its checksum: expected sha256 " + "0" * 64),
    (paths_info(csv_oid="1" * 40), "'selected_tags.csv' failed its checksum: expected git blob " + "1" * 40),
    (paths_info(csv_size=len(CSV) + 1), "'selected_tags.csv' failed its checksum"),  # the size is part of the id
])
def test_an_api_checksum_that_differs_from_the_served_bytes_is_refused(server, tmp_path, answer, message):
    env = hub(server, "wd-swinv2-tagger-v3", answer)
    with pytest.raises(DownloadError, match=message) as e:
        tm.fetch_model(tm.plan("wd-swinv2-tagger-v3", env), tmp_path)
    assert "it was not kept" in str(e.value) and str(tmp_path) not in str(e.value)
    assert leftovers(tmp_path) == []  # neither the refused file nor the one that passed, nor a temp


def test_the_registry_wins_over_the_api(server, tmp_path):
    env = hub(server, "wd-convnext-tagger-v3", paths_info(onnx_sha="0" * 64))  # the API would refuse the model
    pinned = {"model.onnx": SHA, "selected_tags.csv": hashlib.sha256(CSV).hexdigest()}
    env[tm.REGISTRY_ENV] = json.dumps({"wd-convnext-tagger-v3": pinned})
    Handler.asked.clear()
    tm.fetch_model(tm.plan("wd-convnext-tagger-v3", env), tmp_path)
    assert Handler.asked == [] and leftovers(tmp_path) == ["model.onnx", "selected_tags.csv"]


@pytest.mark.parametrize("answer, message", [
    (b"<html>rate limited</html>", r"is not JSON .*it starts b'<html>rate limited</html>'.*Check the API URL"),
    (b'{"error": "Repository not found"}', "is a JSON dict, expected a list of files"),
    ([], "does not list 'selected_tags.csv' as a file"),
    ([{"type": "file", "path": "model.onnx", "size": 1, "oid": "9" * 40, "lfs": {"oid": "not-a-sha"}},
      {"type": "file", "path": "selected_tags.csv", "size": 1, "oid": "9" * 40}], "64 hex digits, got 'not-a-sha'"),
    ([{"type": "file", "path": "model.onnx", "size": 1, "oid": "9" * 40, "lfs": {"oid": SHA}},
      {"type": "file", "path": "selected_tags.csv", "size": 2**40, "oid": "9" * 40}], "over the 33,554,432-byte limit"),
])
def test_a_malformed_api_answer_is_refused_with_its_reason(server, tmp_path, answer, message):
    env = hub(server, "wd-vit-large-tagger-v3", answer)
    with pytest.raises(DownloadError, match=message) as e:
        tm.plan("wd-vit-large-tagger-v3", env)
    assert "wd-vit-large-tagger-v3" in str(e.value) or "selected_tags.csv" in str(e.value)


def test_an_unreachable_or_missing_api_says_what_to_do(server, unused_port):
    env = {tm.ALLOW_ENV: "1", tm.API_URL_ENV: f"http://127.0.0.1:{unused_port}"}
    with pytest.raises(DownloadError, match=r"Asking for the checksums of 'wd-eva02-large-tagger-v3' failed: could "
                                            r"not reach .*Check the network and the API URL"):
        tm.plan("wd-eva02-large-tagger-v3", env)
    Handler.api.pop("/api/models/SmilingWolf/wd-eva02-large-tagger-v3/paths-info/main", None)
    with pytest.raises(DownloadError, match="answered HTTP 404"):
        tm.plan("wd-eva02-large-tagger-v3", dict(env, **{tm.API_URL_ENV: server}))
    with pytest.raises(DownloadError, match="Only http"):
        tm.plan("wd-eva02-large-tagger-v3", dict(env, **{tm.API_URL_ENV: "file:///etc"}))


@pytest.fixture
def unused_port():
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_file_checks_a_git_blob_when_no_sha256_is_given(server, tmp_path):
    blob = GitBlob(git_blob_id(PAYLOAD), len(PAYLOAD))
    assert download_file(f"{server}/file.bin", tmp_path / "a.bin", None, git_blob=blob, timeout=10,
                         max_bytes=10 * 2**20) == SHA
    with pytest.raises(DownloadError, match="40 hex digits"):
        download_file(f"{server}/file.bin", tmp_path / "b.bin", None, git_blob=GitBlob("x", 1), timeout=10,
                      max_bytes=10 * 2**20)
    with pytest.raises(DownloadError, match="64 hex digits, got 'None'"):
        download_file(f"{server}/file.bin", tmp_path / "b.bin", None, timeout=10, max_bytes=10 * 2**20)
    assert leftovers(tmp_path) == ["a.bin"]


def test_model_choice_strips_the_download_mark():
    assert tm.model_choice("wd-vit-tagger-v3" + tm.DOWNLOAD_MARK) == ("wd-vit-tagger-v3", True)
    assert tm.model_choice("tiny") == ("tiny", False)
