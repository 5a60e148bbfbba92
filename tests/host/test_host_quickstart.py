"""The README's quick start, run exactly as the README prints it (placeholders substituted, plus the smoke-run
flags the README itself documents) against the session's ComfyUI, from that server's custom_nodes folder with its
Python first on PATH, as a user with ComfyUI's venv active would; and its refusals when nothing can be queued."""

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

from comfy_host import FIXTURE_CHECKPOINT_NAME, ROOT, free_port, write_elf_folder

README = ROOT / "README.md"
PLACEHOLDER_SERVER = "http://127.0.0.1:8188"


def quick_start_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Quick start\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def readme_commands() -> tuple[list[str], str]:
    """The quick start's commands (the one bash block) and the smoke-run flags the README documents."""
    section = quick_start_section()
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the quick start has exactly one bash block"
    commands = [line for line in blocks[0].splitlines() if line.strip()]
    smoke = re.search(r"smoke run[^`]*`([^`]+)`", section.replace("\n", " "))
    assert smoke, "the quick start documents the smoke-run flags"
    return commands, smoke.group(1)


def run_command(comfy_server, command: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """The command through a shell in the server's custom_nodes folder, ComfyUI's Python first on PATH."""
    env = dict(os.environ, PATH=str(Path(comfy_server.python).parent) + os.pathsep + os.environ.get("PATH", ""),
               OMP_NUM_THREADS="1", PYTHONPATH="")  # PYTHONPATH empty: `atelier` must resolve as a user's would
    return subprocess.run(command, shell=True, cwd=comfy_server.workdir / "custom_nodes", env=env,
                          capture_output=True, text=True, timeout=timeout)


def quick_command(comfy_server, folder: str, checkpoint: str = FIXTURE_CHECKPOINT_NAME, server: str | None = None,
                  extra: str = "") -> str:
    commands, smoke = readme_commands()
    run = commands[1]
    for placeholder in (PLACEHOLDER_SERVER, "input/my_character", "my_model.safetensors"):
        assert placeholder in run, f"the README's run command lost its placeholder {placeholder}"
    run = (run.replace(PLACEHOLDER_SERVER, server or f"http://127.0.0.1:{comfy_server.port}")
           .replace("input/my_character", folder).replace("my_model.safetensors", checkpoint))
    return f"{run} {smoke} {extra}".strip()


def test_the_readme_has_two_commands_install_then_run():
    commands, smoke = readme_commands()
    assert len(commands) == 2
    assert "git clone" in commands[0] and "pip install -r atelier/requirements.txt" in commands[0]
    assert "torch" not in commands[0]  # the host owns torch
    assert shlex.split(commands[1])[:3] == ["python", "-m", "atelier.nodes.quickstart"]
    assert smoke.split() == ["--epochs", "2", "--size", "64", "--sample-steps", "2"]


def test_the_quick_start_trains_and_grids_as_the_readme_prints_it(comfy, comfy_server):
    write_elf_folder(comfy_server.input_dir / "quick_host", 4, seed=21)
    proc = run_command(comfy_server, quick_command(comfy_server, "input/quick_host"))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "queued the character recipe on input/quick_host" in out
    bars = re.findall(r"training \[[#.]{30}\] (\d+)/(\d+)", out)
    assert bars and all(total == "8" for _, total in bars), out  # 4 images × 2 epochs, batch 1
    assert bars[-1][0] == "8" and "done (8 steps); drawing the grid" in out, out  # the bar ends full
    lines = out.strip().splitlines()
    assert "LoRA: models/loras/atelier/my_lora.safetensors" in lines
    assert "epoch files: models/loras/atelier/my_lora-000001.safetensors" in lines
    grids = [line.removeprefix("grid: ") for line in lines if line.startswith("grid: ")]
    assert len(grids) == 1 and grids[0].startswith("output/atelier/grids/my_lora_") and grids[0].endswith(".png")
    assert lines[-1] == f"grid: {grids[0]}"  # it ends with where the grid is
    assert comfy_server.file(grids[0]).is_file()
    lora = comfy_server.models / "loras" / "atelier" / "my_lora.safetensors"
    assert lora.is_file() and (lora.parent / "my_lora-000001.safetensors").is_file()
    from atelier.core.grid import read_png_metadata

    meta = read_png_metadata(comfy_server.file(grids[0]))
    assert [str(v) for v in meta["axes"]["y"].values] == ["atelier/my_lora-000001.safetensors",
                                                          "atelier/my_lora.safetensors"]
    assert list(meta["axes"]["x"].values) == [0.25, 0.5, 0.75, 1.0]
    assert str(comfy_server.workdir) not in out + proc.stderr  # folder labels only, never server paths


def test_no_server_running_is_said_plainly_with_exit_2(comfy_server):
    write_elf_folder(comfy_server.input_dir / "quick_host", 4, seed=21)
    url = f"http://127.0.0.1:{free_port()}"
    proc = run_command(comfy_server, quick_command(comfy_server, "input/quick_host", server=url), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"No ComfyUI answered at {url}" in proc.stderr and "Start ComfyUI first" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_checkpoint_the_server_lacks_is_refused_listing_what_it_has(comfy, comfy_server):
    write_elf_folder(comfy_server.input_dir / "quick_host", 4, seed=21)
    proc = run_command(comfy_server, quick_command(comfy_server, "input/quick_host", checkpoint="nope.safetensors"),
                       timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Checkpoint 'nope.safetensors' is not one the server offers" in proc.stderr
    assert f"'{FIXTURE_CHECKPOINT_NAME}'" in proc.stderr and "models/checkpoints" in proc.stderr
    assert "queued" not in proc.stdout


def test_an_unknown_folder_is_refused_listing_what_the_server_has(comfy, comfy_server):
    write_elf_folder(comfy_server.input_dir / "quick_host", 4, seed=21)
    proc = run_command(comfy_server, quick_command(comfy_server, "input/not_there"), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Folder 'input/not_there' is not one the server offers" in proc.stderr and "'input'" in proc.stderr


def test_a_failing_run_shows_the_servers_message_with_exit_1(comfy, comfy_server):
    folder = comfy_server.input_dir / "quick_empty"  # a folder without one image: Load Dataset refuses it
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("no images here", encoding="utf-8")
    proc = run_command(comfy_server, quick_command(comfy_server, "input/quick_empty", extra="--name quick_fail"),
                       timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "The recipe failed in ComfyUI: AtelierLoadDataset (node 2) failed:" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    history = comfy.request("GET", "/history")
    assert any(json.dumps(e["status"]).count("execution_error") for e in history.values())
