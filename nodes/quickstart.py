"""Quick start: trains a character LoRA on your folder and draws its epochs × strength grid, without opening the
editor, by queueing the recipe on a running ComfyUI over its HTTP API:

    python -m atelier.nodes.quickstart --server http://127.0.0.1:8188 --folder input/my_character \
        --checkpoint my_model.safetensors [--name my_lora] [--trigger word] [--epochs N] [--size PX] [--sample-steps N]

Nothing here imports ComfyUI, torch or the rest of Atelier: it is a plain API client (urllib, standard library),
so it runs from ComfyUI's custom_nodes folder with any Python. The recipe is the guides' character LoRA: Load
Dataset → Prepare Dataset (centre crop) → [Set Trigger Words] → Train LoRA Advanced (rank 32, alpha 16, lr 1e-4,
10 epochs, a file every epoch) → XY Grid (every epoch file × strength, with a no-LoRA row). Every other widget
takes the default the server itself reports in /object_info, so the graph is what the editor would build.
Exit status: 0 done, 1 the server ran the graph and it failed, 2 nothing was queued (server, folder or checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

NODES = ("CheckpointLoaderSimple", "AtelierLoadDataset", "AtelierPrepareDataset", "AtelierSetTriggerWords",
         "AtelierTrainLoRAAdvanced", "AtelierXYGrid")
TRAIN, GRID = "5", "6"  # node ids in the queued prompt, read back from /history
RECIPE = dict(rank=32, alpha=16.0, unet_lr=1e-4, epochs=10, save_every_epochs=1, batch_size=1)
STRENGTHS = "0.25,0.5,0.75,1"
BAR_WIDTH = 30
POLL_SECONDS = 1.0


class QuickStartError(Exception):
    """A message for the user and the exit status that goes with it."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


MAX_BODY = 64 * 2**20  # /object_info of a large install is a few MiB; anything far beyond is not a ComfyUI answer


class Server:
    """The running ComfyUI, over its HTTP API."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.client_id = uuid.uuid4().hex

    def call(self, path: str, payload=None, timeout: float = 30):
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if data is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = response.read(MAX_BODY + 1)  # --server may be any address: never read an endless answer
        except urllib.error.HTTPError as error:
            raw = error.read(MAX_BODY).decode(errors="replace")
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, raw
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise QuickStartError(f"No ComfyUI answered at {self.url} ({reason}). Start ComfyUI first (python main.py "
                                  "in its folder), wait for 'To see the GUI go to: ...', and pass that address "
                                  "with --server.") from None
        if len(body) > MAX_BODY:
            raise QuickStartError(f"{self.url}{path} answered with more than {MAX_BODY:,} bytes; is --server a "
                                  "ComfyUI?")
        return 200, (json.loads(body) if body else None)

    def get(self, path: str):
        status, body = self.call(path)
        if status != 200:
            raise QuickStartError(f"ComfyUI answered {path} with HTTP {status}: {str(body)[:500]}")
        return body


def node_info(server: Server, trigger: str) -> dict:
    """The schema of every node of the recipe; a missing one means Atelier is not loaded in that ComfyUI."""
    info = {}
    for name in NODES:
        if name == "AtelierSetTriggerWords" and not trigger:
            continue
        found = server.get(f"/object_info/{name}").get(name)
        if found is None:
            raise QuickStartError(f"The ComfyUI at {server.url} has no node {name}: Atelier is not loaded there. "
                                  "Put this folder in ComfyUI/custom_nodes, pip install -r requirements.txt with "
                                  "ComfyUI's Python, restart ComfyUI, and check its log for Atelier's import line.")
        info[name] = found
    return info


def options(spec) -> list | None:
    """A combo's choices in either /object_info spelling (a list, or "COMBO" with an options list)."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1:
        return list(spec[1].get("options", []))
    return None


def widget_defaults(schema: dict) -> dict:
    """Every widget input of a node at the default the server reports (links are left to the recipe)."""
    values = {}
    for section in ("required", "optional"):
        for name, spec in schema["input"].get(section, {}).items():
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            choices = options(spec)
            if choices is not None:
                values[name] = extra.get("default", choices[0] if choices else "")
            elif spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN") and "default" in extra:
                values[name] = extra["default"]
    return values


def checked_choice(value: str, choices: list, what: str, flag: str, hint: str) -> str:
    """`value` when the server offers it, else a message listing a few of the server's choices."""
    if value in choices:
        return value
    shown = ", ".join(f"'{c}'" for c in choices[:8]) + (f" and {len(choices) - 8} more" if len(choices) > 8 else "")
    raise QuickStartError(f"{what} '{value}' is not one the server offers ({shown or 'none at all'}). {hint} "
                          f"Pass one of the listed names with {flag}.")


def recipe(info: dict, args) -> dict:
    """The API prompt of the character recipe on the user's folder and checkpoint."""
    ckpt_choices = options(info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]) or []
    checkpoint = checked_choice(args.checkpoint, ckpt_choices, "Checkpoint", "--checkpoint",
                                "Put the .safetensors file in ComfyUI/models/checkpoints (then restart or refresh).")
    folders = options(info["AtelierLoadDataset"]["input"]["required"]["folder"]) or []
    folder = checked_choice(args.folder, folders, "Folder", "--folder",
                            "Put your images in a folder under ComfyUI/input (e.g. input/my_character).")
    load = {**widget_defaults(info["AtelierLoadDataset"]), "folder": folder, "on_missing_caption": "empty"}
    prepare = {**widget_defaults(info["AtelierPrepareDataset"]), "dataset": ["2", 0], "width": args.size,
               "height": args.size}
    base = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2]}
    train = {**widget_defaults(info["AtelierTrainLoRAAdvanced"]), **base, **RECIPE, "dataset": ["3", 0],
             "output_name": args.name, "epochs": args.epochs, "sample_width": args.size, "sample_height": args.size}
    grid = {**widget_defaults(info["AtelierXYGrid"]), **base, "lora_files": [TRAIN, 4], "x_kind": "strength",
            "x_values": STRENGTHS, "y_kind": "lora", "y_values": "run", "baseline": "row", "steps": args.sample_steps,
            "width": args.size, "height": args.size, "grid_name": args.name,
            "positive": args.prompt or args.trigger or args.name}
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
              "2": {"class_type": "AtelierLoadDataset", "inputs": load},
              "3": {"class_type": "AtelierPrepareDataset", "inputs": prepare},
              TRAIN: {"class_type": "AtelierTrainLoRAAdvanced", "inputs": train},
              GRID: {"class_type": "AtelierXYGrid", "inputs": grid}}
    if args.trigger:  # trigger words open every caption, so the LoRA answers to them
        prompt["4"] = {"class_type": "AtelierSetTriggerWords", "inputs": {
            **widget_defaults(info["AtelierSetTriggerWords"]), "dataset": ["3", 0], "trigger_words": args.trigger}}
        train["dataset"] = ["4", 0]
    return prompt


def refusal_text(body) -> str:
    """The server's reasons for refusing a prompt (HTTP 400), one line each."""
    if not isinstance(body, dict):
        return str(body)[:2000]
    lines = [body.get("error", {}).get("message", "") if isinstance(body.get("error"), dict) else str(body)]
    for node, entry in (body.get("node_errors") or {}).items():
        for error in entry.get("errors", []):
            lines.append(f"  node {node} ({entry.get('class_type', '?')}): {error.get('message', '')}: "
                         f"{error.get('details', '')}")
    return "\n".join(line for line in lines if line)


def queue(server: Server, prompt: dict) -> str:
    status, body = server.call("/prompt", {"prompt": prompt, "client_id": server.client_id})
    if status != 200:
        raise QuickStartError(f"ComfyUI refused the recipe (HTTP {status}):\n{refusal_text(body)}")
    return body["prompt_id"]


def bar(done: int, total: int) -> str:
    filled = BAR_WIDTH * min(max(done, 0), total) // max(total, 1)  # clamped: a late step count never overfills
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}"


class Progress:
    """One status line: redrawn in place on a terminal, printed only when it changes otherwise (logs, pipes)."""

    def __init__(self, stream=sys.stdout):
        self.stream, self.last = stream, ""
        self.tty = stream.isatty()

    def show(self, line: str) -> None:
        if line == self.last:
            return
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self.last)))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = line

    def end(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
        self.last = ""


def training_line(server: Server, prompt_id: str) -> str | None:
    """'training [###...] step/total' from Atelier's run history, or None before the training node starts."""
    for run in server.get("/atelier/train/runs"):
        if str(run.get("run", "")).startswith(prompt_id + ":"):
            step, total = int(run.get("step") or 0), int(run.get("total") or 0)  # JSON numbers may be floats
            if run.get("finished"):  # the full bar too: a short run can finish between two polls
                done = f"training {bar(step, total)} " if total else "training "
                return done + f"done ({step} steps); drawing the grid..."
            return "training " + bar(step, total) if total else "training: caching latents and captions..."
    return None


def wait(server: Server, prompt_id: str, timeout: float, progress: Progress) -> dict:
    """Polls /history until the prompt finished, with a progress line; returns its history entry."""
    deadline = time.monotonic() + timeout  # bounded: a server that never finishes is reported, not waited on forever
    while time.monotonic() < deadline:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        status = (entry or {}).get("status") or {}
        if status.get("completed") or status.get("status_str") == "error":
            progress.end()
            return entry
        progress.show(training_line(server, prompt_id) or "waiting for ComfyUI (loading the checkpoint and data)...")
        time.sleep(POLL_SECONDS)
    progress.end()
    raise QuickStartError(f"The recipe did not finish within {timeout:.0f} s; it may still be running in ComfyUI "
                          f"(prompt {prompt_id}). Raise --timeout to wait longer.", status=1)


def failure_text(entry: dict) -> str:
    """The server's own error message of a failed run, with the node that raised it."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return (f"{data.get('node_type', '?')} (node {data.get('node_id', '?')}) failed: "
                    f"{data.get('exception_message', '').strip()}")
        if kind == "execution_interrupted":
            return "the run was interrupted in ComfyUI (Cancel); what was trained so far is saved."
    return "ComfyUI reported an error without a message; see its console."


def summary(entry: dict) -> list[str]:
    """Where the LoRA and the grid are, by the folder names the nodes report (never a server path)."""
    outputs = entry.get("outputs", {})
    report = json.loads(outputs[TRAIN]["text"][0])
    lines = []
    if str(report.get("reuse", "")).startswith("reused"):
        lines.append(report["reuse"])
    lines.append(f"LoRA: {report['lora']}")
    epochs = [name for name in report.get("saved", []) if name != report["lora"]]
    if epochs:
        lines.append(f"epoch files: {', '.join(epochs)}")
    lines += [f"grid: {line}" for line in outputs[GRID]["text"] if line.startswith("output/")]
    return lines


def arguments(argv=None):
    parser = argparse.ArgumentParser(prog="python -m atelier.nodes.quickstart", description=__doc__.split("\n")[0])
    parser.add_argument("--server", default="http://127.0.0.1:8188", help="The running ComfyUI's address.")
    parser.add_argument("--folder", required=True, help="Your images, as the Load Dataset dropdown names them "
                                                        "(input/<folder>); captions from .txt files beside them.")
    parser.add_argument("--checkpoint", required=True, help="The base model's name in models/checkpoints.")
    parser.add_argument("--name", default="my_lora", help="The LoRA's file name (models/loras/atelier/<name>).")
    parser.add_argument("--trigger", default="", help="Trigger words put first in every caption.")
    parser.add_argument("--prompt", default="", help="The grid's prompt (default: the trigger words, else the name).")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="Training epochs (a file each).")
    parser.add_argument("--size", type=int, default=512, help="Training and grid resolution in pixels.")
    parser.add_argument("--sample-steps", type=int, default=20, help="Sampling steps of the grid cells.")
    parser.add_argument("--timeout", type=float, default=48 * 3600, help="Seconds to wait for the run.")
    return parser.parse_args(argv)


def stop(server: Server, prompt_id: str) -> None:
    """Ctrl-C: take our prompt out of the queue, and interrupt only when ours is the one running (someone else's
    job in front of it is left alone)."""
    server.call("/queue", {"delete": [prompt_id]})
    status, queue_state = server.call("/queue")
    running = queue_state.get("queue_running", []) if status == 200 and isinstance(queue_state, dict) else []
    if any(isinstance(item, list) and len(item) > 1 and item[1] == prompt_id for item in running):
        server.call("/interrupt", {"prompt_id": prompt_id})  # newer ComfyUI checks the id; 0.3.64 ignores it


def main(argv=None) -> int:
    args = arguments(argv)
    server = Server(args.server)
    try:
        server.get("/system_stats")
        prompt_id = queue(server, recipe(node_info(server, args.trigger), args))
        print(f"queued the character recipe on {args.folder} with {args.checkpoint} (prompt {prompt_id})", flush=True)
        try:
            entry = wait(server, prompt_id, args.timeout, Progress())
        except KeyboardInterrupt:
            stop(server, prompt_id)
            raise QuickStartError("Stopped: asked ComfyUI to interrupt the run; what was trained so far is saved.",
                                  status=1) from None
        if entry["status"].get("status_str") != "success":
            raise QuickStartError(f"The recipe failed in ComfyUI: {failure_text(entry)}", status=1)
    except QuickStartError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.status
    print("\n".join(summary(entry)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
