"""The quick-start client without a host: it imports nothing but the standard library, reads both /object_info
spellings of a combo, and refuses clearly before queueing anything. The host tier runs it for real."""

import socket
import subprocess
import sys
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
