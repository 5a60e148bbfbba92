"""The tagger download through a real ComfyUI server: from a loopback mirror, sha256-checked, no partial file.

Downloads are an administrator's switch (environment variables read by the server), so this module starts its own
server with ATELIER_ALLOW_DOWNLOADS=1, a base URL and a Hub API on loopback and registry checksums for two models;
the session's shared server keeps downloads off.
"""

import functools
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="onnx is in the test extra: pip install -e '.[test]'")
from tiny_tagger import tagger_widgets, write_tiny_tagger  # noqa: E402

from comfy_host import ComfyServer, find_checkout, find_python, fixture_checkpoint  # noqa: E402

CHECKOUT, _ = find_checkout()  # None: the host conftest skips every test here, saying why

GOOD, BAD, API_ONLY = "wd-vit-tagger-v3", "wd-swinv2-tagger-v3", "wd-convnext-tagger-v3"  # API_ONLY: no registry


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the server under test stops reading a refused file early; that is expected here


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        """The Hub API's paths-info: model.onnx as an LFS file (its sha256), the csv as a plain git file (blob id)."""
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        folder = Path(self.directory, self.path.split("/")[4])  # /api/models/SmilingWolf/<name>/paths-info/main
        onnx, csv = (folder / "model.onnx").read_bytes(), (folder / "selected_tags.csv").read_bytes()
        body = json.dumps([
            {"type": "file", "path": "model.onnx", "size": len(onnx), "oid": "9" * 40,
             "lfs": {"oid": hashlib.sha256(onnx).hexdigest(), "size": len(onnx), "pointerSize": 134}},
            {"type": "file", "path": "selected_tags.csv", "size": len(csv),
             "oid": hashlib.sha1(b"blob %d\0" % len(csv) + csv).hexdigest()}]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A loopback HTTP server holding the tiny tagger under /<model name>/ (as Hugging Face's resolve/main/ does) and
    answering the Hub API's paths-info route for it."""
    root = tmp_path_factory.mktemp("mirror")
    for name in (GOOD, BAD, API_ONLY):
        write_tiny_tagger(root / name)
    httpd = QuietServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/{{name}}/", f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def dl_server(mirror, tmp_path_factory):
    """A second ComfyUI server whose administrator enabled downloads: GOOD with its real checksums, BAD with a wrong
    model.onnx checksum in the registry, API_ONLY with none there (its checksums come from the loopback API)."""
    root, base_url, api_url = mirror
    sums = {f: hashlib.sha256((root / GOOD / f).read_bytes()).hexdigest() for f in ("model.onnx", "selected_tags.csv")}
    registry = {GOOD: sums, BAD: dict(sums, **{"model.onnx": "0" * 64})}
    python = find_python(CHECKOUT)
    server = ComfyServer(CHECKOUT, python, tmp_path_factory.mktemp("comfy_download"))
    if not server.has_module("onnxruntime"):
        pytest.skip(f"the host's Python ({python}) has no onnxruntime; pip install onnxruntime there")
    server.prepare(fixture_checkpoint(CHECKOUT, python))
    env = {"ATELIER_ALLOW_DOWNLOADS": "1", "ATELIER_TAGGER_BASE_URL": base_url, "ATELIER_TAGGER_API_URL": api_url,
           "ATELIER_TAGGER_REGISTRY": json.dumps(registry)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the server copies the environment when it starts
    try:
        server.client = server.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    yield server
    server.stop()


def tag_prompt(model):
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x0000FF}},
        "2": {"class_type": "AtelierTagImages", "inputs": {"images": ["1", 0], **tagger_widgets(model)}},
    }


def error_of(comfy, prompt):
    entry = comfy.wait(comfy.queue(prompt), timeout=120)
    assert entry["status"]["status_str"] == "error", entry["status"]
    (err,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    return err["exception_message"]


def model_options(comfy):
    """The model dropdown's values as /object_info lists them (the tooltip left out)."""
    return comfy.object_info()["AtelierTagImages"]["input"]["required"]["model"][1]["options"]


def test_dropdown_offers_the_standard_models_marked_for_download(dl_server):
    options = model_options(dl_server.client)
    assert f"{GOOD} (download)" in options and f"{BAD} (download)" in options, options
    assert f"{API_ONLY} (download)" in options, options  # no registry entry: its checksums come from the API


def test_wrong_checksum_is_refused_and_leaves_no_file(dl_server):
    message = error_of(dl_server.client, tag_prompt(f"{BAD} (download)"))
    assert "failed its checksum: expected sha256 " + "0" * 64 in message, message
    assert str(dl_server.workdir) not in message
    tagger_dir = dl_server.models / "wd14_tagger"
    assert sorted(os.listdir(tagger_dir)) == [], "a refused download left files behind"


def test_without_a_registry_entry_the_api_checksums_are_used(dl_server, mirror):
    out = dl_server.client.run(tag_prompt(f"{API_ONLY} (download)"), timeout=120)
    assert out["2"]["text"][0] == "hatsune miku, blue, long hair, ^_^, smile \\(happy\\)"
    folder = dl_server.models / "wd14_tagger" / API_ONLY
    assert sorted(os.listdir(folder)) == ["model.onnx", "selected_tags.csv"]
    assert (folder / "model.onnx").read_bytes() == (mirror[0] / API_ONLY / "model.onnx").read_bytes()


def test_download_from_loopback_then_tag(dl_server, mirror):
    root = mirror[0]
    out = dl_server.client.run(tag_prompt(f"{GOOD} (download)"), timeout=120)
    assert out["2"]["text"][0] == "hatsune miku, blue, long hair, ^_^, smile \\(happy\\)"
    folder = dl_server.models / "wd14_tagger" / GOOD
    assert sorted(os.listdir(folder)) == ["model.onnx", "selected_tags.csv"]  # no hidden temp left either
    for f in ("model.onnx", "selected_tags.csv"):
        assert (folder / f).read_bytes() == (root / GOOD / f).read_bytes()
    options = model_options(dl_server.client)
    assert GOOD in options and f"{GOOD} (download)" not in options, options  # now listed as a present model


def test_with_downloads_off_the_error_says_where_to_get_the_model(comfy, comfy_server):
    """The session's shared server runs without ATELIER_ALLOW_DOWNLOADS: nothing is fetched, and the message says
    where the model comes from and how to enable the download."""
    message = error_of(comfy, tag_prompt(GOOD))
    assert "downloads are off" in message and f"https://huggingface.co/SmilingWolf/{GOOD}" in message, message
    assert f"models/wd14_tagger/{GOOD}/" in message and "ATELIER_ALLOW_DOWNLOADS=1" in message, message
    assert not (comfy_server.models / "wd14_tagger" / GOOD).exists()
    assert not [o for o in model_options(comfy) if o.endswith("(download)")]
