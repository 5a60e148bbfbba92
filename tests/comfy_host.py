"""Finds a ComfyUI checkout, starts a real server on loopback with this pack loaded, and talks to it over HTTP.

Used by the host tier only. Nothing here imports ComfyUI: the server is a subprocess driven exactly as an API
client drives it (POST /prompt, GET /history, POST /interrupt, GET /object_info).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_SCRIPT = Path(__file__).parent / "host" / "make_fixture_checkpoint.py"
FIXTURE_CHECKPOINT_NAME = "atelier_tiny_sd15.safetensors"
PACK_NAME = "atelier"


def candidate_checkouts() -> list[tuple[str, Path]]:
    """Where the host tier looks for ComfyUI, in order: $COMFYUI_PATH, the ComfyUI this pack sits in,
    ~/comfy/ComfyUI."""
    places = []
    if os.environ.get("COMFYUI_PATH"):
        places.append(("$COMFYUI_PATH", Path(os.environ["COMFYUI_PATH"]).expanduser()))
    if ROOT.parent.name == "custom_nodes":
        places.append(("the ComfyUI this pack is installed in", ROOT.parent.parent))
    places.append(("comfy-cli's default workspace", Path.home() / "comfy" / "ComfyUI"))
    return places


def find_checkout() -> tuple[Path | None, str]:
    """The first candidate holding ComfyUI's main.py, and a sentence naming every place looked at."""
    looked = []
    for label, path in candidate_checkouts():
        if (path / "main.py").is_file() and (path / "comfy").is_dir():
            return path.resolve(), ""
        looked.append(f"{label} ({path})")
    return None, "no ComfyUI checkout found; looked in: " + "; ".join(looked) + ". Set COMFYUI_PATH to run it."


def find_python(checkout: Path) -> str:
    """$COMFYUI_PYTHON, else a venv inside or beside the checkout, else the interpreter running the tests."""
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    for venv in (checkout / "venv", checkout / ".venv", checkout.parent / "venv", checkout.parent / ".venv"):
        for exe in (venv / "bin" / "python", venv / "Scripts" / "python.exe"):
            if exe.is_file():
                return str(exe)
    return sys.executable


def cache_dir() -> Path:
    path = Path(os.environ.get("ATELIER_CACHE", Path.home() / ".cache" / "atelier")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fixture_checkpoint(checkout: Path, python: str, seed: int = 0) -> Path:
    """The tiny SD1.5-detected checkpoint, generated once per (generator source, seed, ComfyUI version) and cached.

    The cache key hashes what determines the bytes; a `.sha256` sidecar records the file's own hash, checked on
    reuse so a truncated or altered cache file is regenerated rather than trusted.
    """
    version_file = checkout / "comfyui_version.py"
    version = version_file.read_bytes() if version_file.exists() else b""
    key_src = FIXTURE_SCRIPT.read_bytes() + str(seed).encode() + version
    key = hashlib.sha256(key_src).hexdigest()[:16]
    path = cache_dir() / f"tiny-sd15-{key}.safetensors"
    sidecar = path.with_suffix(".sha256")
    if path.exists() and sidecar.exists() and sidecar.read_text().strip() == _sha256(path):
        return path
    proc = subprocess.run(
        [python, str(FIXTURE_SCRIPT), str(path), "--seed", str(seed)],
        cwd=checkout, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fixture checkpoint generation failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    sidecar.write_text(_sha256(path) + "\n")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyError(RuntimeError):
    """An HTTP error answer from the server, with its decoded JSON body."""

    def __init__(self, status: int, body):
        super().__init__(f"HTTP {status}: {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


@dataclass
class ComfyClient:
    """A minimal ComfyUI API client over urllib (what users' scripts do)."""

    base_url: str
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def request(self, method: str, path: str, payload=None, timeout: float = 60):
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise ComfyError(e.code, parsed) from None
        return json.loads(body) if body else None

    def object_info(self) -> dict:
        return self.request("GET", "/object_info")

    def queue(self, prompt: dict) -> str:
        """POST /prompt; returns the prompt id. Validation errors raise ComfyError(400, {...})."""
        return self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.request("GET", f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """Polls /history until the prompt finished (success or error); returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"].get("completed") or entry["status"].get("status_str") == "error"
            ):
                return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queues a prompt, waits, and returns its outputs; raises with the server's message if execution failed."""
        entry = self.wait(self.queue(prompt), timeout)
        if entry["status"].get("status_str") != "success":
            raise AssertionError(f"prompt failed: {json.dumps(entry['status'].get('messages'))[:4000]}")
        return entry["outputs"]

    def wait_for_event(self, event_type: str, timeout: float = 120, predicate=lambda data: True) -> dict:
        """Listens on the websocket (as the web UI does) until an event of `event_type` matching `predicate`."""
        import websocket  # websocket-client, in the test extra

        ws = websocket.create_connection(self.base_url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}",
                                         timeout=timeout)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                message = ws.recv()
                if isinstance(message, str):
                    event = json.loads(message)
                    if event.get("type") == event_type and predicate(event.get("data", {})):
                        return event["data"]
        finally:
            ws.close()
        raise TimeoutError(f"no '{event_type}' event within {timeout} s")

    def interrupt(self) -> None:
        self.request("POST", "/interrupt", {})


def combo_refusal(client: "ComfyClient", prompt: dict, node_id: str, input_name: str,
                  timeout: float = 300) -> tuple[str, str, str]:
    """How the host refused a combo value outside its options: ("queue", "value_not_in_list", details) where the
    server checks V3 combo values at queue time (upstream: HTTP 400), else ("execution", exception type, message)
    from the node's own check (0.3.64 does not check V3 combos). Fails when neither refused it."""
    try:
        prompt_id = client.queue(prompt)
    except ComfyError as error:
        assert error.status == 400, str(error)
        errors = error.body["node_errors"][node_id]["errors"]
        hit = [e for e in errors if e["extra_info"].get("input_name") == input_name]
        assert hit, f"HTTP 400 without an error for {input_name!r}: {error}"
        return "queue", hit[0]["type"], hit[0]["details"]
    entry = client.wait(prompt_id, timeout)
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors, f"the value was accepted: {json.dumps(entry['status'])[:2000]}"
    return "execution", errors[0]["exception_type"], errors[0]["exception_message"]


def txt2img_prompt(text: str, *, seed: int, prefix: str, ckpt: str = FIXTURE_CHECKPOINT_NAME,
                   lora: str | None = None, strength: float = 1.0, steps: int = 3, cfg: float = 4.0) -> dict:
    """Stock graph: checkpoint (+ stock LoraLoader) → encode → KSampler (`steps` euler steps, 64²) → decode →
    SaveImage."""
    model, clip = ["1", 0], ["1", 1]
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if lora:
        prompt["9"] = {"class_type": "LoraLoader", "inputs": {"model": model, "clip": clip, "lora_name": lora,
                                                              "strength_model": strength, "strength_clip": strength}}
        model, clip = ["9", 0], ["9", 1]
    prompt.update({
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": text}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": model, "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": cfg,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    })
    return prompt


def write_elf_folder(folder: Path, count: int, seed: int) -> Path:
    """`count` 64² random-colour images elf_<i>.png with captions 'blonde elf, pose <i>' (the host tier's tiny
    training set), created in `folder`."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((64, 64), Image.BICUBIC).save(
            folder / f"elf_{i}.png")
        (folder / f"elf_{i}.txt").write_text(f"blonde elf, pose {i}", encoding="utf-8")
    return folder


def load_dataset_node(folder: str, **widgets) -> dict:
    """An AtelierLoadDataset node reading sidecar captions from `folder`; `widgets` replace the defaults below."""
    inputs = dict(folder=folder, sub_path="", role="train", repeats=1, caption_source="sidecar",
                  caption_extension=".txt", fixed_caption="", caption_encoding="utf-8", on_missing_caption="error",
                  recursive=True, prior_loss_weight=1.0, subset_name="", verify_images=False)
    return {"class_type": "AtelierLoadDataset", "inputs": {**inputs, **widgets}}


def prepare_dataset_node(dataset: list, **widgets) -> dict:
    """An AtelierPrepareDataset node (centre crop to 64², unless `widgets` say otherwise) fed by link `dataset`."""
    inputs = dict(dataset=dataset, mode="crop", width=64, height=64, pad_color="black", background="white",
                  filter="lanczos", bucket_step=64, no_upscale=False, subsets="")
    return {"class_type": "AtelierPrepareDataset", "inputs": {**inputs, **widgets}}


def advanced_train_widgets(output_name: str, **widgets) -> dict:
    """Every widget of Train LoRA Advanced: one quick fp32 step at rank 4, nothing saved or sampled on the way;
    `widgets` replace the defaults below."""
    defaults = dict(output_name=output_name, rank=4, alpha=4.0, conv_rank=0, conv_alpha=1.0, dropout=0.0,
                    rank_dropout=0.0, module_dropout=0.0, epochs=1, max_steps=1, batch_size=1, grad_accum=1,
                    unet_lr=1e-3, te_lr=1e-4, train_text_encoder=False, optimizer="adamw",
                    weight_decay=0.01, scheduler="constant", warmup_steps=0, num_cycles=1, power=1.0, loss="l2",
                    huber_delta=0.1, min_snr_gamma=0.0, noise_offset=0.0, min_timestep_percent=0.0,
                    max_timestep_percent=1.0, max_grad_norm=1.0, precision="fp32", seed=3, ema_decay=0.0,
                    caption_shuffle=True, keep_tokens=1, caption_dropout=0.0, tag_dropout=0.0, masked_loss=False,
                    save_every_steps=0, save_every_epochs=0,
                    keep_last=0, sample_every_steps=0, sample_every_epochs=0, sample_prompts="", sample_negative="",
                    sample_seed=0, sample_steps=2, sample_cfg=4.0, sample_sampler="euler", sample_scheduler="normal",
                    sample_width=64, sample_height=64, cache_latents=False, gradient_checkpointing=False,
                    target_patterns="", exclude_patterns="", rank_overrides="",
                    resume_state="(none)", continue_from="(none)", config_json="")
    return {**defaults, **widgets}


def saved_pixels(server: "ComfyServer", outputs: dict):
    """The image the prompt's SaveImage node (id 7) wrote, as an int16 array (so differences do not wrap)."""
    import numpy as np
    from PIL import Image

    info = outputs["7"]["images"][0]
    return np.asarray(Image.open(server.output_dir / info["subfolder"] / info["filename"]), dtype=np.int16)


def render(client: "ComfyClient", server: "ComfyServer", text: str, **kwargs):
    """Runs txt2img_prompt(text, **kwargs) and returns the saved pixels."""
    return saved_pixels(server, client.run(txt2img_prompt(text, **kwargs)))


def txt2latent_prompt(text: str, **kwargs) -> dict:
    """txt2img_prompt with the KSampler's LATENT saved by stock SaveLatent (node 7) instead of decoded and saved as
    an image: the sampler's own output, before a random-weight VAE saturates it into pixels."""
    prompt = txt2img_prompt(text, **kwargs)
    del prompt["6"]
    prompt["7"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": kwargs["prefix"]}}
    return prompt


def saved_latent(server: "ComfyServer", outputs: dict, node: str = "7"):
    """The latent tensor a stock SaveLatent node wrote (a .latent safetensors under output/), as float64 numpy."""
    from safetensors.numpy import load_file

    info = outputs[node]["latents"][0]
    return load_file(str(server.output_dir / info["subfolder"] / info["filename"]))["latent_tensor"].astype("float64")


def sample_latent(client: "ComfyClient", server: "ComfyServer", text: str, **kwargs):
    """Runs txt2latent_prompt(text, **kwargs) and returns the KSampler's output latent."""
    return saved_latent(server, client.run(txt2latent_prompt(text, **kwargs)))


def cosine(a, b) -> float:
    """Cosine similarity of two arrays, flattened."""
    import numpy as np

    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@dataclass
class ComfyServer:
    """A ComfyUI subprocess on loopback with temp model/input/output folders and this checkout as a custom node."""

    checkout: Path
    python: str
    workdir: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def models(self) -> Path:
        return self.workdir / "models"

    @property
    def input_dir(self) -> Path:
        return self.workdir / "input"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "output"

    def file(self, shown: str) -> Path:
        """The file a node's report names as '<folder>/<relative>' (reports never show server paths)."""
        folder, _, rest = str(shown).strip().partition("/")
        base = {"output": self.output_dir, "input": self.input_dir, "models": self.models}
        return base[folder] / rest

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def prepare(self, checkpoint: Path) -> None:
        for sub in ("models/checkpoints", "models/loras", "models/wd14_tagger", "input", "output", "temp", "user",
                    "custom_nodes", "datasets"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        link = self.workdir / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(ROOT, target_is_directory=True)
        ckpt = self.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME
        if not ckpt.exists():
            try:
                os.link(checkpoint, ckpt)
            except OSError:
                shutil.copyfile(checkpoint, ckpt)
        (self.workdir / "extra_model_paths.yaml").write_text(
            "atelier_host_tests:\n"
            f"  base_path: {self.workdir}\n"
            "  custom_nodes: custom_nodes\n"
            "  checkpoints: models/checkpoints\n"
            "  loras: models/loras\n"
            "  datasets: datasets\n"
            "  wd14_tagger: models/wd14_tagger\n"
        )

    def start(self, timeout: float = 240) -> ComfyClient:
        self.port = self.port or free_port()
        cmd = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--base-directory", str(self.workdir),  # default models/ etc. in the temp dir
            "--extra-model-paths-config", str(self.workdir / "extra_model_paths.yaml"),
            "--output-directory", str(self.output_dir), "--input-directory", str(self.input_dir),
            "--temp-directory", str(self.workdir / "temp"), "--user-directory", str(self.workdir / "user"),
            "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME,
            "--preview-method", "none",
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.checkout, stdout=log, stderr=subprocess.STDOUT, env=env)
        client = ComfyClient(f"http://127.0.0.1:{self.port}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                client.request("GET", "/system_stats", timeout=5)
                return client
            except (urllib.error.URLError, ConnectionError, OSError, ComfyError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def has_module(self, name: str) -> bool:
        """Whether the server's Python can import `name` (optional dependencies such as onnxruntime)."""
        return subprocess.run([self.python, "-c", f"import {name}"], capture_output=True).returncode == 0

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, n: int = 6000) -> str:
        return self.log_text()[-n:]


def random_lora(checkpoint: Path, out: Path, *, rank: int = 4, seed: int = 0, scale: float = 0.05,
                unet_pattern: str = ".attn", text_layers: int = 2) -> Path:
    """A kohya LoRA with random (non-zero) weights for the attention layers of `checkpoint`'s UNet and the first
    `text_layers` CLIP layers' attention, read from the checkpoint's own tensor names and shapes."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    with safe_open(str(checkpoint), framework="pt") as f:
        for key in f.keys():
            if not key.endswith(".weight"):
                continue
            if key.startswith("model.diffusion_model.") and unet_pattern in key and "norm" not in key:
                base = "lora_unet_" + key[len("model.diffusion_model."):-len(".weight")].replace(".", "_")
            elif (key.startswith("cond_stage_model.transformer.text_model.encoder.layers.") and "self_attn" in key
                  and int(key.split(".")[5]) < text_layers):
                base = "lora_te_" + key[len("cond_stage_model.transformer."):-len(".weight")].replace(".", "_")
            else:
                continue
            shape = f.get_slice(key).get_shape()
            if len(shape) != 2:
                continue
            tensors[base + ".lora_down.weight"] = torch.randn(rank, shape[1], generator=g) * scale
            tensors[base + ".lora_up.weight"] = torch.randn(shape[0], rank, generator=g) * scale
            tensors[base + ".alpha"] = torch.tensor(float(rank))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out))
    return out
