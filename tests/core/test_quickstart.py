"""The quick-start client without a host: it imports nothing but the standard library, reads both /object_info
spellings of a combo, and refuses clearly before queueing anything. The host tier runs it for real."""

import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from atelier.nodes import quickstart as qs

ROOT = Path(__file__).resolve().parents[2]


def test_it_imports_nothing_of_comfyui_torch_or_numpy(tmp_path):
    (tmp_path / "atelier").symlink_to(ROOT, target_is_directory=True)  # as custom_nodes/atelier holds it
    code = ("import sys, atelier.nodes.quickstart; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'comfy', 'folder_paths', 'numpy', "
            "'PIL', 'safetensors', 'server'}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_widget_defaults_read_both_combo_spellings_and_skip_links():
    schema = {"input": {
        "required": {"model": ["MODEL", {"tooltip": "m"}], "rank": ["INT", {"default": 16, "min": 1}],
                     "mode": [["crop", "pad"], {"default": "pad"}], "kind": ["COMBO", {"options": ["a", "b"]}],
                     "text": ["STRING", {"default": ""}]},
        "optional": {"flag": ["BOOLEAN", {"default": True}], "lora_files": ["ATELIER_LORA_FILES", {}]}}}
    assert qs.widget_defaults(schema) == {"rank": 16, "mode": "pad", "kind": "a", "text": "", "flag": True}


def test_a_choice_the_server_lacks_lists_a_few_of_its_own():
    choices = [f"model_{i}.safetensors" for i in range(11)]
    assert qs.checked_choice("model_3.safetensors", choices, "Checkpoint", "--checkpoint", "") == "model_3.safetensors"
    with pytest.raises(qs.QuickStartError) as caught:
        qs.checked_choice("mine.safetensors", choices, "Checkpoint", "--checkpoint", "Put it in models/checkpoints.")
    text = str(caught.value)
    assert text.startswith("Checkpoint 'mine.safetensors' is not one the server offers ('model_0.safetensors'")
    assert "'model_7.safetensors' and 3 more" in text and "--checkpoint" in text and caught.value.status == 2


def test_no_server_exits_2_with_a_plain_message(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the connection is refused
        status = qs.main(["--server", f"http://127.0.0.1:{port}", "--folder", "input/x", "--checkpoint", "m"])
    err = capsys.readouterr().err
    assert status == 2 and f"No ComfyUI answered at http://127.0.0.1:{port}" in err and "--server" in err


def test_the_servers_refusal_and_failure_are_shown_by_node():
    body = {"error": {"message": "Prompt outputs failed validation"},
            "node_errors": {"5": {"class_type": "AtelierTrainLoRAAdvanced", "errors": [
                {"message": "Value bigger than max", "details": "rank: 5000 > 1024"}]}}}
    assert qs.refusal_text(body) == ("Prompt outputs failed validation\n  node 5 (AtelierTrainLoRAAdvanced): "
                                     "Value bigger than max: rank: 5000 > 1024")
    entry = {"status": {"messages": [["execution_start", {}], ["execution_error", {
        "node_type": "AtelierLoadDataset", "node_id": "2", "exception_message": "No images in 'input/x'.\n"}]]}}
    assert qs.failure_text(entry) == "AtelierLoadDataset (node 2) failed: No images in 'input/x'."


def test_the_bar_is_fixed_width_and_never_overfills():
    assert qs.bar(0, 8) == "[" + "." * 30 + "] 0/8"
    assert qs.bar(8, 8) == "[" + "#" * 30 + "] 8/8"
    assert qs.bar(9, 8) == "[" + "#" * 30 + "] 9/8" and qs.bar(3, 0) == "[" + "." * 30 + "] 3/0"


class _Recorder(BaseHTTPRequestHandler):
    """A loopback stand-in for ComfyUI's /queue and /interrupt routes that records what the command sent."""

    calls: list = []
    running: list = []
    big = b""

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.calls.append(("GET", self.path, None))
        self._answer(self.big or json.dumps({"queue_running": self.running, "queue_pending": []}).encode())

    def do_POST(self):  # noqa: N802
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("POST", self.path, payload))
        self._answer(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.calls, _Recorder.running, _Recorder.big = [], [], b""
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ctrl_c_removes_our_prompt_and_interrupts_only_our_run(recorder):
    qs.stop(qs.Server(recorder), "ours")  # someone else's job is running: it is left alone
    assert ("POST", "/queue", {"delete": ["ours"]}) in _Recorder.calls
    assert not any(path == "/interrupt" for _, path, _ in _Recorder.calls)
    _Recorder.calls, _Recorder.running = [], [[7, "ours", {}, {}, []]]
    qs.stop(qs.Server(recorder), "ours")
    assert ("POST", "/interrupt", {"prompt_id": "ours"}) in _Recorder.calls


def test_an_endless_answer_is_refused_not_read_whole(recorder, monkeypatch):
    monkeypatch.setattr(qs, "MAX_BODY", 1024)
    _Recorder.big = b"[" + b"0," * 4096 + b"0]"
    with pytest.raises(qs.QuickStartError, match="answered with more than"):
        qs.Server(recorder).get("/object_info")
