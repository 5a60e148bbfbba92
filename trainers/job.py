"""A training job as a self-contained folder, and the run that trains it without the UI. Nothing here knows ComfyUI.

A job folder holds job.json (format, output name, TrainConfig, NetworkConfig, the base model reference: checkpoint
name, folder and sha256, never a server path; the kohya metadata known at export; one record per sample; the
sha256 of each tensor file, so a set left half-rewritten is refused and a state trained on other data is not resumed),
latents.safetensors (`latent.<i>`, `flipped.<i>`, `mask.<i>` in the model's latent space) and, when the text
encoder is frozen, text.safetensors (`cond.<j>` and `<extra key>.<j>` for caption j of job.json's "captions").
job.json's optional "memory" holds the node-level memory settings (gradient_checkpointing, blocks_to_swap); they
change how much memory a step takes, never the result, and a job written before them runs with both off.
No source image is needed to train it. The model is not in the folder: the caller hands run_job a JobModel (the
denoiser, model sampling and the modules LoRA adapts). nodes/job.py loads it through ComfyUI as a library for the
command line; tests build it from tests/tiny_models.py. Under torchrun, see trainers/distributed.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from ..core.conditioning import tile_tokens
from ..core.lora_meta import epochs_of
from ..core.paths import Root, atomic_write_bytes, open_inside, read_bytes_inside
from .checkpoint import read_state_config, run_environment
from .loop import Callbacks, StepInfo, Trainer, TrainConfig, TrainSample
from .memory import MAX_SWAP
from .network import LoRANetwork, NetworkConfig
from .run import RunFiles, RunResult, TrainingRun

JOB_FORMAT, JOB_VERSION = "atelier.training_job", 1
JOB_FILE, LATENTS_FILE, TEXT_FILE = "job.json", "latents.safetensors", "text.safetensors"
JOB_KEYS = ("name", "config", "network", "base", "metadata", "captions", "samples", "files")
MEMORY_KEY, MEMORY_DEFAULTS = "memory", {"gradient_checkpointing": False, "blocks_to_swap": 0}
SAMPLE_KEYS = ("caption", "loss_weight", "repeats", "random_flip", "regularization", "key", "flipped", "mask")
JOB_FILE_LIMIT = 256 << 20  # per-sample records and metadata only; the tensors live in the safetensors files
# Metadata keys the run fills in at each save; the rest of the template is fixed at export.
RUN_KEYS = ("ss_steps", "ss_epoch", "ss_num_epochs", "ss_max_train_steps", "ss_training_started_at",
            "ss_training_finished_at")


@dataclass
class Job:
    """A job folder read back: everything a run needs except the model."""

    folder: Path
    name: str
    config: TrainConfig
    network: NetworkConfig
    base: dict  # the base model reference: name, file, folder, sha256, family, v_prediction, ...
    metadata: dict[str, str]  # kohya metadata fixed at export (dataset, base model); RUN_KEYS are filled per save
    samples: list[TrainSample]
    text: dict[str, tuple[torch.Tensor, dict]] | None  # frozen embeddings per caption, or None (encode at run time)
    data_sha256: str = ""  # digest of the tensor files: a resume from a state trained on other data is refused
    gradient_checkpointing: bool = False  # memory settings: how the runner runs the steps, not what they compute
    blocks_to_swap: int = 0


@dataclass
class JobModel:
    """The model a job trains on: the modules LoRA adapts by kohya prefix, the denoiser, its sampling, the device;
    `encode` is needed only when the job carries no frozen text embeddings."""

    roots: dict[str, torch.nn.Module]
    denoise: Callable
    model_sampling: object
    device: torch.device | str = "cpu"
    encode: Callable | None = None
    model_dtype: str | None = None


def needs_text_encoder(config: TrainConfig) -> bool:
    """Whether captions must be encoded during the run: the text encoder trains, or captions change per step."""
    return config.train_text_encoder or config.caption_shuffle or config.tag_dropout > 0


def job_captions(samples: list[TrainSample], config: TrainConfig) -> list[str]:
    """Every caption a frozen-encoder run can meet: each sample's, plus "" when caption dropout is on."""
    captions = list(dict.fromkeys(s.caption for s in samples))
    return captions + ([""] if config.caption_dropout > 0 and "" not in captions else [])


def check_blocks_to_swap(value, what: str = "blocks_to_swap") -> int:
    """`value` when it is a whole number from 0 to MAX_SWAP (true, 2.5 and "3" are refused), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SWAP:
        raise ValueError(f"{what} is {value!r}; expected a whole number from 0 to {MAX_SWAP} (0 turns block swap "
                         "off). Fix it, or override it with --blocks-to-swap N.")
    return value


def check_memory(memory, where: str) -> dict:
    """A job's memory settings checked, {"gradient_checkpointing": bool, "blocks_to_swap": int}; absent ones are
    off, so a job exported before they existed runs as it did."""
    if memory is None:
        return dict(MEMORY_DEFAULTS)
    if not isinstance(memory, dict):
        raise ValueError(f"{where} is {memory!r}; expected an object such as {json.dumps(MEMORY_DEFAULTS)}. Fix it "
                         "or export the job again.")
    unknown = sorted(set(memory) - set(MEMORY_DEFAULTS))
    if unknown:
        raise ValueError(f"{where} has unknown '{unknown[0]}'; expected only {', '.join(MEMORY_DEFAULTS)}. Fix it "
                         "or export the job again.")
    checkpointing = memory.get("gradient_checkpointing", False)
    if not isinstance(checkpointing, bool):
        raise ValueError(f"{where}'s gradient_checkpointing is {checkpointing!r}; expected true or false. Fix it or "
                         "export the job again.")
    return {"gradient_checkpointing": checkpointing,
            "blocks_to_swap": check_blocks_to_swap(memory.get("blocks_to_swap", 0), f"{where}'s blocks_to_swap")}


def sample_record(s: TrainSample) -> dict:
    return {"caption": s.caption, "loss_weight": s.loss_weight, "repeats": s.repeats, "random_flip": s.random_flip,
            "regularization": s.regularization, "key": s.key, "flipped": s.flipped_latent is not None,
            "mask": s.mask is not None}


def write_job(folder: Path, *, name: str, config: TrainConfig, network: NetworkConfig, base: dict,
              metadata: dict[str, str], samples: list[TrainSample],
              encode: Callable[[list[str]], tuple[torch.Tensor, dict]] | None = None,
              gradient_checkpointing: bool = False, blocks_to_swap: int = 0) -> Path:
    """Writes a job folder (each file atomically); `encode` freezes the captions' embeddings when the run allows;
    the memory settings go into job.json for the runner."""
    config.validate()
    memory = check_memory({"gradient_checkpointing": gradient_checkpointing, "blocks_to_swap": blocks_to_swap},
                          "The job's memory settings")
    if not samples:
        raise ValueError("No training samples: the dataset is empty, so there is no job to export.")
    latents = {}
    for i, s in enumerate(samples):
        latents[f"latent.{i}"] = s.latent.float().contiguous()
        if s.flipped_latent is not None:
            latents[f"flipped.{i}"] = s.flipped_latent.float().contiguous()
        if s.mask is not None:
            latents[f"mask.{i}"] = s.mask.float().contiguous()
    files = {LATENTS_FILE: save_safetensors_bytes(refuse_non_finite(latents, "sample"))}
    captions = []
    if encode is not None and not needs_text_encoder(config):
        captions = job_captions(samples, config)
        files[TEXT_FILE] = save_safetensors_bytes(refuse_non_finite(frozen_text(encode, captions), "caption"))
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, data in files.items():
        atomic_write_bytes(folder / file_name, data)
    # job.json last, with each tensor file's digest: a re-export cut short leaves a set read_job refuses
    job = {"format": JOB_FORMAT, "version": JOB_VERSION, "name": name, "config": config.to_dict(),
           "network": dataclasses.asdict(network), "base": base, "metadata": metadata, "captions": captions,
           "samples": [sample_record(s) for s in samples], MEMORY_KEY: memory,
           "files": {n: hashlib.sha256(data).hexdigest() for n, data in files.items()}}
    atomic_write_bytes(folder / JOB_FILE, json.dumps(job, indent=1).encode("utf-8"))
    return folder


def refuse_non_finite(tensors: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The tensors unchanged, or ValueError naming the first `<kind>.<index>` holding NaN or inf (nothing is saved)."""
    for key, t in tensors.items():
        if not torch.isfinite(t).all():
            kind, index = key.rsplit(".", 1)
            hint = ("its image and the VAE (an fp16 VAE can overflow; encode in fp32 or bf16)" if what == "sample"
                    else "the text encoder's output for it")
            raise ValueError(f"The {kind} of {what} {index} holds NaN or inf values, so the job was not written. "
                             f"Check {hint} and export again.")
    return tensors


def frozen_text(encode, captions: list[str]) -> dict[str, torch.Tensor]:
    """`cond.<j>` (1, T, D) and `<extra>.<j>` for each caption, encoded without gradients, 16 at a time."""
    out = {}
    for start in range(0, len(captions), 16):
        with torch.no_grad():
            cond, extra = encode(captions[start:start + 16])
        for k in range(cond.shape[0]):
            out[f"cond.{start + k}"] = cond[k:k + 1].float().contiguous().cpu()
            for key, value in extra.items():
                out[f"{key}.{start + k}"] = value[k:k + 1].float().contiguous().cpu()
    return out


def _job_bytes(folder: Path, name: str, limit: int | None = None) -> bytes:
    return read_bytes_inside(folder / name, [Root("job folder", folder)], what=f"job file '{name}'", limit=limit)


def read_job(folder: str | Path) -> Job:
    """A job folder read back and checked (format, version, settings, every sample's tensors present)."""
    folder = Path(folder)
    if not (folder / JOB_FILE).is_file():
        raise ValueError(f"'{folder.name}' is not a training job: it has no {JOB_FILE}. Export one with Export "
                         "Training Job (Atelier); jobs are written to output/atelier/jobs/<name>.")
    data = json.loads(_job_bytes(folder, JOB_FILE, JOB_FILE_LIMIT))
    if data.get("format") != JOB_FORMAT or data.get("version") != JOB_VERSION:
        raise ValueError(f"{folder.name}/{JOB_FILE} is format {data.get('format')!r} version {data.get('version')!r}; "
                         f"this Atelier reads {JOB_FORMAT!r} version {JOB_VERSION}. Export the job again.")
    check_fields(data, JOB_KEYS, "job.json")
    check_fields(data["network"], [], "job.json's network", {f.name for f in dataclasses.fields(NetworkConfig)})
    memory = check_memory(data.get(MEMORY_KEY), f"{folder.name}/{JOB_FILE}'s {MEMORY_KEY}")
    raw = {}
    for name in data["files"]:
        raw[name] = _job_bytes(folder, name)
        if not isinstance(data["files"][name], str) or hashlib.sha256(raw[name]).hexdigest() != data["files"][name]:
            raise ValueError(f"{folder.name}/{name} does not match the digest in {JOB_FILE} (an export was cut short "
                             "or a file was replaced); export the job again.")
    latents = load_safetensors_bytes(raw[LATENTS_FILE])
    samples = []
    for i, r in enumerate(data["samples"]):
        check_fields(r, SAMPLE_KEYS, f"job.json's sample {i}")
        if f"latent.{i}" not in latents:
            raise ValueError(f"{folder.name}/{LATENTS_FILE} has no latent for sample {i}; export the job again.")
        samples.append(TrainSample(latents[f"latent.{i}"], r["caption"], r["loss_weight"], r["repeats"],
                                   r["random_flip"], latents.get(f"flipped.{i}") if r["flipped"] else None,
                                   r["regularization"], latents.get(f"mask.{i}") if r["mask"] else None, r["key"]))
    text = None
    if data["captions"]:
        tensors = load_safetensors_bytes(raw[TEXT_FILE])
        keys = sorted({k.rsplit(".", 1)[0] for k in tensors} - {"cond"})
        text = {c: (tensors[f"cond.{j}"], {k: tensors[f"{k}.{j}"] for k in keys})
                for j, c in enumerate(data["captions"])}
    network = NetworkConfig(**data["network"])
    digest = hashlib.sha256("".join(data["files"][n] for n in sorted(data["files"])).encode()).hexdigest()
    return Job(folder, data["name"], TrainConfig.from_dict(data["config"]), network, data["base"],
               data["metadata"], samples, text, digest, **memory)


def check_fields(data, required, where: str, allowed: set[str] | None = None) -> None:
    """ValueError naming the first missing (or, with `allowed`, unknown) key of a job.json object."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not a JSON object; export the job again.")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{where} is missing '{missing[0]}'; export the job again.")
    unknown = sorted(set(data) - allowed) if allowed is not None else []
    if unknown:
        raise ValueError(f"{where} has unknown '{unknown[0]}'; export the job again.")


def frozen_encoder(text: dict[str, tuple[torch.Tensor, dict]], folder_name: str):
    """encode(captions) from a job's frozen embeddings; a caption it does not hold is refused by name."""
    def encode(captions: list[str]):
        missing = [c for c in captions if c not in text]
        if missing:
            raise ValueError(f"Caption {missing[0][:60]!r} has no frozen embedding in job '{folder_name}'; export "
                             "the job again, or run it with the text encoder (the command line loads it).")
        conds = [text[c] for c in captions]
        extra = {k: torch.cat([e[k] for _, e in conds]) for k in conds[0][1]}  # pooled etc.: (1, D) each
        return tile_tokens([c for c, _ in conds]), extra  # frozen in groups of 16, so token lengths may differ
    return encode


def job_metadata(job: Job, trainer: Trainer) -> Callable[[int, int], dict[str, str]]:
    """metadata(step, epoch) for the run's files: the export's kohya template with this run's counts and times."""
    started = time.time()

    def metadata(step: int, epoch: int) -> dict[str, str]:
        return {**job.metadata, **epochs_of(step, trainer.total_steps, trainer.steps_per_epoch),
                "ss_steps": str(step), "ss_max_train_steps": str(trainer.total_steps),
                "ss_training_started_at": str(started), "ss_training_finished_at": str(time.time())}
    return metadata


def step_event(info: StepInfo) -> dict:
    """The step event the node sends to the live chart, as one JSON-able dict."""
    return {"step": info.step, "total": info.total_steps, "epoch": info.epoch, "loss": info.loss,
            "smoothed": info.smoothed_loss, "lr": info.lr, "samples_per_second": info.samples_per_second,
            "skipped": info.skipped, "skipped_steps": info.skipped_steps}


def build_run(job: Job, model: JobModel, out: Path | None = None, on_step: Callable | None = None,
              distributed=None) -> TrainingRun:
    """The Trainer and TrainingRun of a job, as the training node builds them; files go to `out` (the job folder
    by default): <name>.safetensors and state/<name>."""
    out = Path(out) if out is not None else job.folder
    encode = model.encode
    if encode is None or (job.text is not None and not job.config.train_text_encoder):
        if job.text is None:
            raise ValueError(f"Job '{job.folder.name}' carries no frozen text embeddings (its captions change per "
                             "step or the text encoder trains), so the run needs the model's text encoder.")
        encode = frozen_encoder(job.text, job.folder.name)
    network = LoRANetwork(model.roots, job.network, seed=job.config.seed).to(model.device)
    writer = distributed is None or distributed.is_writer
    callbacks = Callbacks(on_step=on_step if writer else None)  # progress from rank 0 only
    trainer = Trainer(job.config, network, model.denoise, model.model_sampling, job.samples, encode, callbacks,
                      device=model.device, distributed=distributed)
    files = RunFiles(out / f"{job.name}.safetensors", out / "state" / job.name)
    environment = {**run_environment(trainer, model.model_dtype), "job_data_sha256": job.data_sha256}
    return TrainingRun(trainer, files, job_metadata(job, trainer), environment)


def run_job(folder: str | Path, model: JobModel, out: Path | None = None, resume: bool = False,
            on_step: Callable | None = None, distributed=None, contexts=()) -> RunResult:
    """Trains a job folder on `model`; with `resume`, continues from its state folder (any world size); the steps
    run inside `contexts` (the caller's memory savers: gradient checkpointing, block swap)."""
    job = read_job(folder)
    run = build_run(job, model, out, on_step, distributed)
    resume_dir = run.files.state_dir if resume else None
    if resume_dir is not None:
        where = f"state/{job.name}"  # relative to the output folder, never a server path
        if not (resume_dir / "state.json").is_file():
            raise ValueError(f"Nothing to resume: '{where}' in '{run.files.final.parent.name}' has no state.json. "
                             "Run without --resume to start the job from step 0.")
        saved = read_state_config(resume_dir).get("environment", {}).get("job_data_sha256")
        if saved is not None and saved != job.data_sha256:
            raise ValueError(f"'{where}' was trained on other data than this job folder holds now (it was exported "
                             f"again); run without --resume to start over, or delete '{where}'.")
    out_dir = run.files.final.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    return run.train(resume_dir, contexts)


class TerminalProgress:
    """on_step for a terminal: one plain-text progress line rewritten with '\\r', and a JSON-lines log of the same
    step events the node sends to its chart."""

    def __init__(self, log_path: Path | None, stream, width: int = 30):
        self.log_path, self.stream, self.width = log_path, stream, width

    def __call__(self, info: StepInfo) -> None:
        event = step_event(info)
        if self.log_path is not None:  # appended line by line, so a killed run keeps every step it finished
            fd = open_inside(self.log_path, [Root("log folder", self.log_path.parent)], "step log",
                             os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")
        done = int(self.width * info.step / max(info.total_steps, 1))
        self.stream.write(f"\r[{'#' * done}{'.' * (self.width - done)}] step {info.step}/{info.total_steps} "
                          f"epoch {info.epoch} loss {info.smoothed_loss:.4f} lr {info.lr:.2e} "
                          f"{info.samples_per_second:.1f} samples/s")
        if info.step >= info.total_steps:
            self.stream.write("\n")
        self.stream.flush()
