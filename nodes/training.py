"""Training nodes: LoRA on the MODEL and CLIP that ComfyUI already loaded, written where LoraLoader finds it."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from .compat import io

import comfy.model_management
import comfy.samplers
import comfy.sd
import comfy.utils
import folder_paths

from ..core.draw import line_chart, pil_to_image_tensor
from ..core.images import write_image
from ..core.lora_meta import HOST_FAMILIES
from ..core.paths import Root, is_inside, quoted, resolve_inside, safe_name
from ..core.paths import shown as shown_in
from ..core.provenance import BaseModel
from ..trainers.checkpoint import run_environment
from ..trainers.data import LatentCache, build_samples, kohya_metadata
from ..trainers.loop import CONFIG_RANGES, PRECISIONS, Callbacks, Trainer, TrainConfig, TrainingStopped
from ..trainers.kohya_config import export_kohya, import_kohya, is_toml, looks_like_kohya
from ..trainers.memory import MAX_SWAP, block_swap, planned_bytes
from ..trainers.memory import gradient_checkpointing as checkpointed
from ..trainers.reuse import IDENTITY_KEY
from ..trainers.run import RunFiles, TrainingRun, run_loras
from ..trainers.objectives import LOSSES
from ..trainers.optim import OPTIMIZERS, SCHEDULERS
from ..trainers.network import LoRANetwork, NetworkConfig, family_default_targets, parse_rank_overrides
from .compat import is_dynamic, resident_clip, resident_patcher, show_stop_message
from .dataset import dataset_in
from .host import forget_model_list, model_output_path, output_subdir
from .live import HISTORY, run_id
from .lora_files import LORA_FILES, read_lora
from .provenance import base_model
from .reuse import earlier_run, run_identity
from .train_adapter import (ComfyDenoiser, autograd_friendly_clip, clip_encoder, draw_samples, encode_latents,
                            encoder_key, interrupted, make_encoder, text_encoder_roots, thaw)
from .validate import NONE, check_choice, check_names, check_number

def send_event(event: str, data: dict) -> None:
    """Websocket event for the web/ chart (no-op outside a server)."""
    try:
        from server import PromptServer

        PromptServer.instance.send_sync(event, data)
    except (ImportError, AttributeError):
        pass


def lora_output_path(output_name: str) -> Path:
    """models/loras/atelier/<name>.safetensors; the name is a plain file name (no separators, no '..')."""
    return model_output_path("loras", output_name, "output_name")


STATE_NONE = NONE  # no resume state / no LoRA to continue from


def state_root() -> Path:
    return output_subdir("atelier", "train_state")


def resume_options() -> list[str]:
    root = Path(folder_paths.get_output_directory()) / "atelier" / "train_state"
    names = sorted(p.name for p in root.iterdir()
                   if not p.name.startswith(".") and is_inside(p, root) and (p / "state.json").is_file()
                   ) if root.is_dir() else []
    return [STATE_NONE] + names


def resume_folder(resume_state: str) -> Path | None:
    """The state folder to resume from, checked: a plain name of output/atelier/train_state whose real path stays
    there (a symlinked state leading elsewhere is refused), holding a state.json."""
    if resume_state == STATE_NONE:
        return None
    root = Root("output/atelier/train_state", state_root())
    folder = resolve_inside(root, safe_name(resume_state, "resume_state"))
    if not (folder / "state.json").is_file():
        raise ValueError(f"No training state named '{quoted(resume_state)}' in output/atelier/train_state; pick one "
                         "from the list (states are saved there by earlier runs of this node).")
    return folder


def lora_options() -> list[str]:
    return [STATE_NONE] + folder_paths.get_filename_list("loras")


def shown(path: Path) -> str:
    """A saved file's name as users see it (output/..., models/loras/...), never an absolute server path."""
    roots = [Root("output", Path(folder_paths.get_output_directory()))]
    roots += [Root(f"models/{kind}", Path(root)) for kind in ("loras", "checkpoints")
              for root in folder_paths.get_folder_paths(kind)]
    return shown_in(path, roots)


def resume_hint(state_dir: Path, advanced: bool, widget: str = "resume_state") -> str:
    """How to continue a stopped run, in the words of the node the user is looking at (its resume widget's name)."""
    if advanced:
        return (f"set {widget} to '{state_dir.name}' (same settings; press R if the list does not show it yet) "
                "and run again")
    return f"use Train LoRA Advanced with resume_state '{state_dir.name}' and the same settings"


@dataclass
class HostModel:
    """The MODEL (and CLIP) made trainable for one run: a clone with ordinary frozen weights, the LoRA roots, the
    denoiser, the device, and the CLIP to encode with (the input CLIP, or its resident copy whose text encoders
    train when the input streams its weights)."""

    patcher: object
    roots: dict
    denoise: ComfyDenoiser
    device: torch.device
    clip: object = None


def trainable_host(model, clip, train_text_encoder: bool, train_t5: bool = False,
                   clip_weights: bool = False) -> HostModel:
    """Loads and thaws a clone of MODEL (and CLIP's text encoders when they train, the T5-XXL too with `train_t5`),
    never changing the inputs; `clip_weights`: the run also reads the CLIP's weights (a checkpoint holds them)."""
    te_roots = text_encoder_roots(clip, t5=train_t5) if train_text_encoder else {}  # refused before any loading
    # thaw needs loaded weights: a dynamic-VRAM MODEL / CLIP trains on upstream's resident delegate (the input CLIP
    # encodes elsewhere in the graph, so its streamed weights are never thawed or wrapped)
    te_clip = clip
    if clip is not None and (train_text_encoder or clip_weights) and is_dynamic(clip.patcher):
        te_clip = resident_clip(clip, "Training the text encoder" if train_text_encoder else "Training")
        te_roots = text_encoder_roots(te_clip, t5=train_t5) if train_text_encoder else {}  # the resident modules
    mp = resident_patcher(model, "Training")
    comfy.model_management.load_models_gpu([mp], force_full_load=True)
    thaw(mp.model.diffusion_model)
    roots = {"lora_unet": mp.model.diffusion_model}
    if train_text_encoder:
        te_clip.load_model()
        thaw(te_clip.cond_stage_model)  # in place: the encoder modules in te_roots stay the same objects
        roots.update(te_roots)
    return HostModel(mp, roots, ComfyDenoiser(mp), next(mp.model.diffusion_model.parameters()).device, te_clip)


def refuse_pairs(dataset) -> None:
    """A dataset of image pairs trains only as a slider: any other trainer would quietly learn the 'after' images."""
    if getattr(dataset, "pairs", ()):
        raise ValueError(f"This dataset holds {len(dataset.pairs)} before/after image pairs (Load Image Pairs); only "
                         "Train Slider LoRA from Pairs trains them as pairs. Connect it there, or load the images "
                         "with Load Dataset to train on them as ordinary images.")


def encoded_dataset(dataset, vae, host: HostModel, config: TrainConfig, cache_latents: bool, node_id,
                    pairs_ok: bool = False):
    """(samples, skipped, cache): every image prepared and VAE-encoded once (or read from the latent cache); a pairs
    dataset only where the caller trains pairs (`pairs_ok`)."""
    if not pairs_ok:
        refuse_pairs(dataset)
    bar = comfy.utils.ProgressBar(max(len(dataset.samples()), 1), node_id=node_id)
    cache = (LatentCache(output_subdir("atelier", "cache", "latents"), encoder_key(vae, host.patcher))
             if cache_latents else None)
    samples, skipped = build_samples(dataset, lambda imgs: encode_latents(vae, host.patcher, imgs),
                                     on_progress=lambda n: bar.update_absolute(n), cache=cache,
                                     masks=config.masked_loss, encode_clip=clip_encoder(vae, host.patcher))
    return samples, skipped, cache


def default_targets(host: HostModel, net_config: NetworkConfig) -> NetworkConfig:
    """The user's own targets, else the family's default blocks: kohya's UNet blocks (LoCon too), SD3's joint
    blocks, or a DiT family's own transformer blocks."""
    family = HOST_FAMILIES.get(type(host.patcher.model.model_config).__name__)
    return family_default_targets(net_config, host.denoise.family, family)


def lora_network(host: HostModel, net_config: NetworkConfig, seed: int, continue_from: str):
    """The run's LoRA over the host's roots (kohya's default blocks unless the user chose targets), optionally
    starting from an existing LoRA's weights; returns (network, the network config used)."""
    net = default_targets(host, net_config)
    network = LoRANetwork(host.roots, net, seed=seed).to(host.device)
    if continue_from != STATE_NONE:
        # read_lora refuses malformed files by name; another architecture: an error listing the keys
        network.load_kohya_state_dict(read_lora(continue_from)[0])
    return network, net


class TrainingEvents:
    """The run's callbacks on the host side: ComfyUI's progress bar, Cancel, websocket events, preview samples."""

    def __init__(self, node_id, name: str, host: HostModel, clip, vae, sampling: dict | None):
        self.node_id, self.name, self.host = node_id, name, host
        self.clip, self.vae, self.sampling = clip, vae, sampling
        self.bar = comfy.utils.ProgressBar(1, node_id=node_id)
        self.stop_requested = False
        self.sample_files: list[str] = []
        self.run = run_id(node_id)  # the live view's key: this prompt and node, so runs never mix
        HISTORY.start(self.run, node_id, name)

    def on_step(self, info) -> None:
        # Cancel is read from the flag itself: upstream throttles progress updates, so the hook may never run
        self.stop_requested = self.stop_requested or interrupted()
        try:
            self.bar.update_absolute(info.step, info.total_steps)
        except comfy.model_management.InterruptProcessingException:
            # 0.3.64's progress hook raises on a cancel that arrived since (and clears the flag): save, then stop
            self.stop_requested = True
        point = {"step": info.step, "total": info.total_steps, "epoch": info.epoch, "loss": info.loss,
                 "smoothed": info.smoothed_loss, "lr": info.lr, "samples_per_second": info.samples_per_second}
        HISTORY.step(self.run, point)
        send_event("atelier.train.step", {"node": self.node_id, "run": self.run, "name": self.name, **point,
                                          "skipped": info.skipped, "skipped_steps": info.skipped_steps})

    def should_stop(self) -> bool:
        return self.stop_requested or interrupted()

    def on_sample(self, step: int, epoch: int) -> None:
        if not self.sampling or not self.sampling["prompts"]:
            return
        folder = output_subdir("atelier", "samples", self.name)
        sent = []
        for i, img in enumerate(draw_samples(self.host.patcher, self.clip, self.vae, **self.sampling)):
            target = folder / f"e{epoch:04d}_s{step:06d}_{i:02d}.png"
            write_image(target, img, "PNG")  # atomic, as every file Atelier writes
            self.sample_files.append(shown(target))
            sent.append({"filename": target.name, "subfolder": f"atelier/samples/{self.name}", "type": "output"})
        HISTORY.sample(self.run, {"step": step, "epoch": epoch, "images": sent})
        send_event("atelier.train.sample", {"node": self.node_id, "run": self.run, "step": step, "epoch": epoch,
                                            "images": sent})

    def callbacks(self) -> Callbacks:
        return Callbacks(on_step=self.on_step, should_stop=self.should_stop, on_sample=self.on_sample)


def host_trainer(config: TrainConfig, trainable, host: HostModel, samples, events: TrainingEvents,
                 objective=None) -> Trainer:
    """A Trainer on the host's denoiser and model sampling, encoding with its CLIP (pooled where the family needs it)
    and reporting to `events`; `objective` replaces the standard loss."""
    return Trainer(config, trainable, host.denoise, host.denoise.model_sampling, samples,
                   make_encoder(host.clip, pooled=host.denoise.needs_pooled), events.callbacks(), device=host.device,
                   objective=objective)


def host_run(trainer: Trainer, host: HostModel, files: RunFiles, fields, **options) -> TrainingRun:
    """A training node's TrainingRun: its files, the fields of each saved file, and the environment a resume checks
    (the MODEL's dtype); `options` are TrainingRun's (export_dtype, write, state_extra)."""
    return TrainingRun(trainer, files, fields, run_environment(trainer, str(host.patcher.model.get_dtype())), **options)


def run_in_host(run: TrainingRun, events: TrainingEvents, hint, folder_type: str, resume_dir: Path | None = None,
                contexts=()):
    """Trains `run` inside `contexts` (resuming from `resume_dir` when given), then what every training node does:
    closes the live view, refreshes the `folder_type` list, logs the warnings, and on a Cancel shows where it stopped
    and raises TrainingStopped; `hint(state_dir)` says how to continue, in the node's words."""
    try:
        result = run.train(resume_dir, list(contexts))
    finally:
        HISTORY.finish(events.run)
    forget_model_list(folder_type)  # the new files are in the list for nodes downstream and the dropdowns
    for warning in result.warnings:
        logging.warning("[Atelier] %s", warning)
    if result.stopped:  # cancelled from ComfyUI: everything is saved, then say so
        message = run.stopped_message(result, hint(result.state_dir))
        show_stop_message(events.node_id, message, "atelier.train.stopped",
                          {"node": events.node_id, "step": result.state.step, "message": message})
        # ComfyUI (0.3.64 and upstream) shows an InterruptProcessingException only as "Processing interrupted",
        # dropping its text; a RuntimeError's message reaches the error dialog and /history (execution_error),
        # and the failure still stops every node downstream.
        raise TrainingStopped(message)
    return result


def train_lora(model, clip, vae, dataset, output_name: str, config: TrainConfig, net_config: NetworkConfig,
               node_id=None, resume_state: str = STATE_NONE, continue_from: str = STATE_NONE, keep_last: int = 0,
               sampling: dict | None = None, cache_latents: bool = True, gradient_checkpointing: bool = False,
               advanced: bool = False, prompt: dict | None = None, reuse: bool = False, objective=None,
               base: BaseModel | None = None, extra_metadata: dict | None = None, blocks_to_swap: int = 0):
    """The shared body of the training nodes: host wiring around trainers.run; returns (model, clip, losses,
    report, files). `prompt` (the queued graph) tells which checkpoint file the MODEL came from, for the metadata,
    unless the caller passes `base` (the original model of a patched one); `objective` replaces the standard loss;
    `extra_metadata` goes into every file and into the run's identity; with `reuse`, a finished earlier run of the
    same identity is loaded instead of training again; `blocks_to_swap` blocks are swapped (trainers.memory)."""
    check_names(output_name=output_name)  # a 5,000-character name is refused now, not after training
    path = lora_output_path(output_name)  # refuse a bad name before any work
    config.validate()
    resume_dir = resume_folder(resume_state)
    if objective is None:
        refuse_pairs(dataset)  # before any model loading or hashing
    base = base or base_model(model, prompt, node_id)  # checkpoint name and hashes, patches carried
    identity = run_identity(config, net_config, dataset, base, model, clip, vae, continue_from, extra_metadata)
    earlier, why = earlier_run(path, identity, state_root() / path.stem) if reuse else (None, "reuse is off")
    if earlier is not None:
        return reused_outputs(model, clip, earlier, path, config, net_config, identity)
    with torch.inference_mode(False):
        host = trainable_host(model, clip, config.train_text_encoder, config.train_t5)
        savers, swap_note = memory_savers(host, gradient_checkpointing, blocks_to_swap)  # refused before encoding
        samples, skipped, cache = encoded_dataset(dataset, vae, host, config, cache_latents, node_id,
                                                  pairs_ok=objective is not None)
        network, net = lora_network(host, net_config, config.seed, continue_from)
        events = TrainingEvents(node_id, path.stem, host, host.clip, vae, sampling)  # previews see the TE LoRA
        trainer = host_trainer(config, network, host, samples, events, objective)
        metadata = lora_metadata(config, net, dataset, path, base, trainer, identity, extra_metadata)
        run = host_run(trainer, host, RunFiles(path, state_root() / path.stem, keep_last, shown), metadata,
                       state_extra={IDENTITY_KEY: identity.parts()})
        clip_ok = autograd_friendly_clip(host.clip.cond_stage_model) if config.train_text_encoder else nullcontext()
        result = run_in_host(run, events, lambda state_dir: resume_hint(state_dir, advanced), "loras", resume_dir,
                             [clip_ok, *savers])
        loaded = {k: v.float() for k, v in result.shipped.items()}
        model_out, clip_out = comfy.sd.load_lora_for_models(model, clip, loaded, 1.0, 1.0)
    report = training_report(result, path, config, net, events, cache, skipped)
    report["reuse"] = f"trained ({why}); run identity {identity.short()}"
    if swap_note:
        report["block_swap"] = swap_note
    return (model_out, clip_out, result.state.losses, report,
            run_loras(result.saved, path, path.parent.name))  # names as the loras list has them: atelier/<file>


def reused_outputs(model, clip, earlier, path: Path, config: TrainConfig, net: NetworkConfig, identity):
    """train_lora's outputs from a finished earlier run of the same identity: its final file applied at strength 1,
    its files, its losses, and a report that says it was reused."""
    loaded = {k: v.float() for k, v in earlier.tensors.items()}
    model_out, clip_out = comfy.sd.load_lora_for_models(model, clip, loaded, 1.0, 1.0)
    meta = earlier.metadata
    report = {"reuse": f"reused {shown(path)}: it was trained earlier with the same settings, data and base model "
                       f"(run identity {identity.short()}), so nothing was trained. Set reuse to false to train again.",
              "lora": shown(path), "saved": [shown(path.parent / Path(n).name) for n in earlier.files.names()],
              "state": shown(state_root() / path.stem), "steps": int(meta.get("ss_steps", 0) or 0),
              "epochs": int(meta.get("ss_epoch", 0) or 0), "config": config.to_dict(),
              "network": {k: v for k, v in net.__dict__.items() if k != "target_patterns"}, "losses": earlier.losses}
    logging.info("[Atelier] %s", report["reuse"])
    return model_out, clip_out, earlier.losses, report, earlier.files


def lora_metadata(config: TrainConfig, net: NetworkConfig, dataset, path: Path, base, trainer: Trainer, identity,
                  extra: dict | None = None):
    """metadata(step, epoch) for the run's files: kohya's ss_* keys with this run's facts, the caller's `extra` keys
    (a method's own record), and the run's identity (finished only in a file saved after the last step), so a later
    run can reuse it."""
    started = time.time()
    extra = {str(k): str(v) for k, v in (extra or {}).items()}  # safetensors metadata is str -> str

    def metadata(step: int, epoch: int) -> dict[str, str]:
        return {**kohya_metadata(config=config, network_config=net, dataset=dataset, output_name=path.stem,
                                 base=base, steps=step, epoch=epoch, started=started, finished=time.time(),
                                 total_steps=trainer.total_steps, steps_per_epoch=trainer.steps_per_epoch),
                **extra, **identity.metadata(finished=step >= trainer.total_steps)}
    return metadata


def training_report(result, path: Path, config: TrainConfig, net: NetworkConfig, events: TrainingEvents, cache,
                    skipped) -> dict:
    """The node's report: what was saved (by folder label), steps, losses, the config to reuse, what was skipped."""
    state = result.state
    return {"lora": shown(path), "saved": [shown(p) for p in result.saved], "state": shown(result.state_dir),
            "steps": state.step, "epochs": state.epoch, "train_seconds": round(result.train_seconds, 3),
            "samples": events.sample_files,
            "latent_cache": {"hits": cache.hits, "misses": cache.misses} if cache else None,
            "config": config.to_dict(), "network": {k: v for k, v in net.__dict__.items() if k != "target_patterns"},
            "skipped": [f"{s.path}: {s.reason}" for s in skipped], "losses": state.losses,
            "skipped_steps": {"count": len(state.skipped_steps), "steps": state.skipped_steps[:100]},
            "warnings": result.warnings}


def checkpoint_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet's / transformer's repeated blocks: items of its top-level ModuleLists, plus a middle block. A UNet's
    blocks are Sequentials whose layers ComfyUI calls one by one (forward_timestep_embed never calls the Sequential's
    own forward), so their layers with sublayers are the blocks there."""
    blocks = [b for child in unet.children() if isinstance(child, torch.nn.ModuleList) for b in child]
    middle = getattr(unet, "middle_block", None)
    blocks += [middle] if isinstance(middle, torch.nn.Module) else []
    return [layer for b in blocks
            for layer in ([c for c in b.children() if next(c.children(), None) is not None]
                          if isinstance(b, torch.nn.Sequential) else [b])]


def swap_blocks(host: HostModel, count: int) -> tuple[list[torch.nn.Module], dict]:
    """The last `count` repeated blocks, whose frozen weights block swap keeps on the offload device, and what the
    report says of them; a count above the model's blocks is refused with the number it has."""
    if count <= 0:
        return [], {}
    blocks = checkpoint_blocks(host.patcher.model.diffusion_model)
    if count > len(blocks):
        raise ValueError(f"blocks_to_swap is {count} but this model has {len(blocks)} swappable blocks; set "
                         f"blocks_to_swap to at most {len(blocks)} (0 turns block swap off).")
    chosen = blocks[len(blocks) - count:]
    offload = torch.device(getattr(host.patcher, "offload_device", "cpu"))
    size = planned_bytes(chosen, host.patcher.model.diffusion_model)  # what BlockSwap will move, as it chooses
    note = {"blocks": count, "of": len(blocks), "offloaded_mib": round(size / 2**20, 1), "to": str(offload)}
    if offload == host.device:  # --cpu, or a host whose offload device is the compute device
        note["note"] = f"the model already runs on {host.device}: block swap saves no memory there"
    return chosen, note


def memory_savers(host: HostModel, gradient_checkpointing: bool, blocks_to_swap: int) -> tuple[list, dict]:
    """Block swap and gradient checkpointing as the contexts a run trains inside, in the order they must be entered,
    and the report's block_swap note (empty when off); the training nodes and the job runner (nodes/job.py) share it."""
    blocks = checkpoint_blocks(host.patcher.model.diffusion_model) if gradient_checkpointing else []
    swapped, note = swap_blocks(host, blocks_to_swap)
    return [block_swap(swapped, host.device, note.get("to", host.device),  # first: it checkpoints its blocks too
                       root=host.patcher.model.diffusion_model),
            checkpointed(blocks)], note


def common_inputs() -> list:
    """The inputs both training nodes start with."""
    return [
        io.Model.Input("model", tooltip="The model to train on (SD1.x, SD2.x, SDXL, ...)."),
        io.Clip.Input("clip", tooltip="The model's CLIP: encodes captions, and is trained when train_text_encoder "
                                      "is on."),
        io.Vae.Input("vae", tooltip="Encodes the prepared images into latents once, before training."),
        dataset_in("The dataset (Load / Prepare Dataset); image sides must be multiples of 8."),
        io.String.Input("output_name", default="my_lora",
                        tooltip="File name in models/loras/atelier (no folders, no '..')."),
    ]


def reuse_input():
    return io.Boolean.Input("reuse", default=True, optional=True,
                            tooltip="When output_name already holds a finished run with the same settings, data and "
                                    "base model (recorded in the file), load it instead of training again, also "
                                    "after a restart; the report says so. Off: always train (replaces the file).")


def lora_run_inputs() -> list:
    """How long and how a simple LoRA run trains (epochs, steps, batch, text encoder, seed): shared by Train LoRA and
    Train Copy-Machine LoRA, in this order."""
    return [
        io.Int.Input("epochs", default=10, min=1, max=10000, tooltip="Passes over the dataset (with repeats)."),
        io.Int.Input("max_steps", default=0, min=0, max=10_000_000,
                     tooltip="Stop after this many optimizer steps; 0 = train for `epochs`."),
        io.Int.Input("batch_size", default=1, min=1, max=256, tooltip="Images per step."),
        io.Boolean.Input("train_text_encoder", default=False,
                         tooltip="Also train LoRA on the text encoder (attention + MLP layers)."),
        io.Float.Input("te_lr", default=2e-5, min=0.0, max=1.0, step=1e-6,
                       tooltip="Text-encoder learning rate when train_text_encoder is on (guides: 2e-5)."),
        io.Int.Input("seed", default=0, control_after_generate=False, min=0, max=2**31 - 1,
                     tooltip="Same seed, same data: the same LoRA (deterministic on CPU)."),
    ]


def training_outputs() -> list:
    return [io.Model.Output("model_out", display_name="model", tooltip="The model with the LoRA applied."),
            io.Clip.Output("clip_out", display_name="clip", tooltip="The CLIP with the LoRA applied."),
            io.Image.Output("loss_chart", tooltip="Loss per step (raw and smoothed)."),
            io.String.Output("report", tooltip="JSON: saved files, steps, losses, config (reusable as config_json "
                                               "of the Advanced node), samples, skipped images."),
            LORA_FILES.Output("lora_files", tooltip="The files this run wrote (every epoch / step file and the final "
                                                    "one): connect to XY Grid (a 'lora' axis with empty values uses "
                                                    "them all) or to the LoRA tools, in the same graph.")]


def training_result(model_out, clip_out, losses, report, files) -> io.NodeOutput:
    chart = line_chart(losses, title=f"loss: {report['steps']} steps")
    text = json.dumps(report, indent=1)
    return io.NodeOutput(model_out, clip_out, pil_to_image_tensor([chart]), text, files, ui={"text": [text]})


class AtelierTrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTrainLoRA",
            display_name="Train LoRA (Atelier)",
            category="atelier/training",
            description="Trains a LoRA on the loaded MODEL (and optionally CLIP) with each family's own objective; "
                        "saves it to models/loras/atelier in kohya format and returns the model with it applied.",
            inputs=[
                *common_inputs(),
                io.Int.Input("rank", default=16, min=1, max=1024, tooltip="LoRA rank (dim): 32 for characters, "
                                                                          "64 for styles in the guides."),
                io.Float.Input("alpha", default=8.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="Network alpha. Effective scale is alpha / rank; kohya's default is rank/2."),
                io.Float.Input("unet_lr", default=1e-4, min=0.0, max=1.0, step=1e-6,
                               tooltip="UNet learning rate (1e-4 is usual for LoRA). Must be > 0."),
                *lora_run_inputs(),
                reuse_input(),
            ],
            outputs=training_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, rank, alpha, unet_lr, epochs, max_steps, batch_size,
                train_text_encoder, te_lr, seed, reuse=True) -> io.NodeOutput:
        config = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, unet_lr=unet_lr, te_lr=te_lr,
                             train_text_encoder=train_text_encoder, seed=seed, save_every_epochs=0)
        return training_result(*train_lora(model, clip, vae, dataset, output_name, config,
                                           NetworkConfig(rank=rank, alpha=alpha),
                                           node_id=cls.hidden.unique_id if cls.hidden else None,
                                           prompt=cls.hidden.prompt if cls.hidden else None, reuse=reuse is True))


CONFIG_TOOLTIPS = {
    "epochs": "Passes over the dataset (with repeats).",
    "max_steps": "Stop after this many optimizer steps; 0 = train for `epochs`.",
    "batch_size": "Images per micro-batch (same-size images are batched together).",
    "grad_accum": "Micro-batches per optimizer step; the loss is averaged over all of them.",
    "unet_lr": "UNet learning rate (1e-4 usual for LoRA; full-dataset phases 3e-6 then 2e-6).",
    "te_lr": "Text-encoder learning rate (guides: 2e-5).",
    "train_text_encoder": "Also train LoRA on the text encoder's attention and MLP layers.",
    "train_t5": "With train_text_encoder: also train the T5-XXL (kohya's train_t5xxl; SD3.5 and Flux.1 save it as "
                "lora_te3_*, Chroma's lone T5 as lora_te1_*). Off trains the CLIPs only, as kohya's default; "
                "refused for models without a T5.",
    "optimizer": "adamw (default), adafactor, lion (use ~1/3 of the AdamW lr) or sgd.",
    "weight_decay": "Decoupled weight decay of the LoRA weights.",
    "scheduler": "Learning-rate schedule after warmup.",
    "warmup_steps": "Steps of linear warmup from ~0 to the learning rate.",
    "num_cycles": "Cycles of cosine_with_restarts.",
    "power": "Exponent of the polynomial schedule (1 = linear).",
    "loss": "l2 (standard), l1, or huber (robust to outliers).",
    "huber_delta": "Huber loss: quadratic within this distance, linear beyond.",
    "min_snr_gamma": "Min-SNR-γ loss weighting (Hang et al., 2023); 5 is the paper's value, 0 = off.",
    "noise_offset": "Adds a per-channel constant to the noise so the model learns very dark/bright images; 0.05 "
                    "is common, 0 = off.",
    "min_timestep_percent": "Train only on noise levels from this percent of the schedule (0 = the noisiest).",
    "max_timestep_percent": "…up to this percent (1 = the cleanest).",
    "max_grad_norm": "Clip the gradient norm to this; 0 = no clipping.",
    "precision": "fp32 (exact, CPU), bf16 (GPU, recommended) or fp16 (GPU, with loss scaling).",
    "seed": "Same seed, same data: the same LoRA (deterministic on CPU).",
    "ema_decay": "Keep an exponential moving average of the LoRA weights (e.g. 0.999); 0 = off.",
    "caption_shuffle": "Shuffle tags after the first keep_tokens tags at every step.",
    "keep_tokens": "Leading tags (trigger words) that shuffling and tag dropout never touch.",
    "caption_dropout": "Probability of training a step with an empty caption.",
    "tag_dropout": "Probability of dropping each tag (after keep_tokens) at a step.",
    "masked_loss": "Weight the loss by each image's alpha channel, so a transparent background (3D renders) is not "
                   "learned; opaque images count everywhere.",
    "save_every_steps": "Also save an intermediate LoRA every N steps; 0 = off.",
    "save_every_epochs": "Save name-00000N.safetensors every N epochs (compare epochs 8-10 on a grid); 0 = off.",
    "sample_every_steps": "Draw the sample prompts every N steps with ComfyUI's sampler; 0 = off.",
    "sample_every_epochs": "Draw the sample prompts every N epochs; 0 = off.",
}
NETWORK_TOOLTIPS = {
    "rank": "LoRA rank (dim): 32 for characters, 64 for styles in the guides.",
    "alpha": "Network alpha. Effective scale is alpha / rank; kohya's default is rank/2.",
    "conv_rank": "LoCon: also adapt 3×3 convolutions with this rank; 0 = off (1×1 convs always use rank).",
    "conv_alpha": "Alpha of the LoCon convolutions.",
    "dropout": "Neuron dropout on the LoRA's down projection (kohya network_dropout).",
    "rank_dropout": "Drops whole rank channels per sample (kohya rank_dropout).",
    "module_dropout": "Skips a whole LoRA module for a step with this probability.",
}
CHOICES = {"optimizer": OPTIMIZERS, "scheduler": SCHEDULERS, "loss": LOSSES, "precision": PRECISIONS}
NETWORK_RANGES = {"rank": (1, 1024), "alpha": (0.0, 1024.0), "conv_rank": (0, 1024), "conv_alpha": (0.0, 1024.0),
                  "dropout": (0.0, 0.99), "rank_dropout": (0.0, 0.99), "module_dropout": (0.0, 0.99)}
RANGES = {**CONFIG_RANGES, **NETWORK_RANGES}  # every numeric widget's real range (a pasted config_json too)
FLOAT_STEPS = {"unet_lr": 1e-6, "te_lr": 1e-6, "weight_decay": 1e-3, "min_timestep_percent": 0.01,
               "max_timestep_percent": 0.01, "ema_decay": 1e-4}


# Settings added after workflows were saved: they come last and optional, so the widget values of saved workflows keep
# their places (the frontend stores them by position) and API prompts without them still validate.
APPENDED = ("train_t5",)


def appended_inputs() -> list:
    """The APPENDED settings' widgets (all booleans so far), with their TrainConfig defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return [io.Boolean.Input(name, default=defaults[name], optional=True, tooltip=CONFIG_TOOLTIPS[name])
            for name in APPENDED]


def checkpointing_input(optional: bool = False):
    """The gradient_checkpointing widget (optional where it was appended to a node after workflows were saved)."""
    return io.Boolean.Input("gradient_checkpointing", default=False, optional=optional,
                            tooltip="Recompute block activations during backward: much less memory for ~30% more "
                                    "time; same result.")


def swap_input():
    """The blocks_to_swap widget: appended after workflows were saved, so optional on every node that has it."""
    return io.Int.Input("blocks_to_swap", default=0, min=0, max=MAX_SWAP, optional=True,
                        tooltip="Block swap, to free GPU memory during training: the frozen weights of this many "
                                "transformer / UNet blocks (the last ones) stay in CPU memory and are copied to the "
                                "GPU only while their block runs; those blocks are also checkpointed. Same result, "
                                "slower steps. The model is still loaded whole once before training starts. 0 = off "
                                "(kohya's blocks_to_swap).")


def widgets_for(cls, tooltips: dict, skip=()) -> list:
    """One widget per dataclass field, named exactly like the field, with its default and tooltip."""
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name not in tooltips:
            continue
        tip, default = tooltips[f.name], f.default
        if f.name in CHOICES:
            out.append(io.Combo.Input(f.name, options=list(CHOICES[f.name]), default=default, tooltip=tip))
        elif isinstance(default, bool):
            out.append(io.Boolean.Input(f.name, default=default, tooltip=tip))
        elif isinstance(default, int):
            low, high = RANGES[f.name]
            # a seed stays as set (no "randomize after generate"): a second Run must not train a new LoRA
            out.append(io.Int.Input(f.name, default=default, min=low, max=high, tooltip=tip,
                                    control_after_generate=False if f.name == "seed" else None))
        else:
            low, high = RANGES[f.name]
            out.append(io.Float.Input(f.name, default=default, min=low, max=high, step=FLOAT_STEPS.get(f.name, 0.01),
                                      tooltip=tip))
    return out


def config_from(widgets: dict, config_json: str) -> tuple[TrainConfig, dict | None, dict | None]:
    """(TrainConfig, NetworkConfig overrides, import report): the widgets', or config_json's (a saved report's
    "config", or a kohya_ss GUI JSON / sd-scripts TOML, imported); every value is type- and range-checked."""
    if not isinstance(config_json, str):
        raise ValueError(f"config_json must be text holding a JSON object, got {type(config_json).__name__}.")
    if config_json.strip():
        try:
            data = json.loads(config_json)
        except json.JSONDecodeError as e:
            if is_toml(config_json):  # an sd-scripts --config_file
                return kohya_config(config_json)
            raise ValueError(f"config_json is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); paste "
                             "a JSON object such as the \"config\" of an earlier report, a kohya_ss GUI JSON or an "
                             "sd-scripts TOML, or leave it empty to use the widgets.") from None
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = data["config"]  # a whole report pasted: its "config" part
        elif isinstance(data, dict) and looks_like_kohya(data):
            return kohya_config(config_json)
        return TrainConfig.from_dict(data), None, None
    return TrainConfig.from_dict({f.name: widgets[f.name] for f in dataclasses.fields(TrainConfig)
                                  if f.name in widgets}), None, None


def kohya_config(text: str) -> tuple[TrainConfig, dict | None, dict]:
    """A kohya config imported: our TrainConfig, its network settings (if any) and what mapped where."""
    train, net, report = import_kohya(text)
    return TrainConfig.from_dict(train), net or None, report


class AtelierTrainLoRAAdvanced(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AtelierTrainLoRAAdvanced",
            display_name="Train LoRA Advanced (Atelier)",
            category="atelier/training",
            description="Every training setting: optimizers, schedules, min-SNR, noise offset, EMA, caption "
                        "augmentation, LoCon, dropout, periodic saves, resume and continue-from.",
            inputs=[
                *common_inputs(),
                *widgets_for(NetworkConfig, NETWORK_TOOLTIPS),
                *widgets_for(TrainConfig, CONFIG_TOOLTIPS, skip=APPENDED),
                io.String.Input("target_patterns", default="", multiline=True,
                                tooltip="Regexes (one per line) on layer names / kohya keys that LoRA may adapt, "
                                        "e.g. 'output_blocks' or 'attn2'; empty = kohya's default (transformer blocks "
                                        "of the UNet, attention + MLP of the text encoder)."),
                io.String.Input("exclude_patterns", default="", multiline=True,
                                tooltip="Regexes (one per line) of layers never adapted, e.g. 'time_embed'."),
                io.String.Input("rank_overrides", default="", multiline=True,
                                tooltip="Per-block ranks, one 'regex = rank' or 'regex = rank/alpha' per line, e.g. "
                                        "'input_blocks_[12] = 8/4'; rank 0 leaves those layers out."),
                checkpointing_input(),
                io.Boolean.Input("cache_latents", default=True,
                                 tooltip="Keep VAE latents on disk (output/atelier/cache/latents), keyed by image "
                                         "bytes, preparation and VAE, so the next run skips decoding and encoding."),
                io.Int.Input("keep_last", default=0, min=0, max=1000,
                             tooltip="Keep only the newest N intermediate files of this run; 0 = keep all."),
                io.Combo.Input("resume_state", options=resume_options(), default=STATE_NONE,
                               tooltip="Continue an interrupted run from its saved state (output/atelier/"
                                       "train_state). The settings must match the saved ones."),
                io.Combo.Input("continue_from", options=lora_options(), default=STATE_NONE,
                               tooltip="Start from an existing LoRA's weights (same rank and architecture)."),
                io.String.Input("sample_prompts", default="", multiline=True,
                                tooltip="Prompts drawn during training, one per line (saved in output/atelier/"
                                        "samples/<name> and shown as they arrive)."),
                io.String.Input("sample_negative", default="", multiline=True,
                                tooltip="Negative prompt for the samples (e.g. 'blur, vignette, instagram')."),
                io.Int.Input("sample_seed", default=0, control_after_generate=False, min=0, max=2**31 - 1,
                             tooltip="Fixed seed, so samples of different epochs are comparable."),
                io.Int.Input("sample_steps", default=20, min=1, max=200, tooltip="Sampling steps of the previews."),
                io.Float.Input("sample_cfg", default=7.0, min=0.0, max=30.0, step=0.1, tooltip="CFG of the previews."),
                io.Combo.Input("sample_sampler", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="ComfyUI sampler for the previews (euler_ancestral = A1111's Euler a)."),
                io.Combo.Input("sample_scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS),
                               default="normal", tooltip="ComfyUI scheduler for the previews."),
                io.Int.Input("sample_width", default=512, min=64, max=4096, step=8, tooltip="Preview width."),
                io.Int.Input("sample_height", default=512, min=64, max=4096, step=8, tooltip="Preview height."),
                io.String.Input("config_json", default="", multiline=True,
                                tooltip="Optional: a training config as JSON (e.g. the 'config' of an earlier "
                                        "report); when given it replaces the training widgets above."),
                reuse_input(),
                *appended_inputs(),
                swap_input(),
            ],
            outputs=training_outputs(),
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, target_patterns, exclude_patterns, rank_overrides,
                gradient_checkpointing, cache_latents, keep_last, resume_state, continue_from, config_json,
                sample_prompts, sample_negative, sample_seed, sample_steps, sample_cfg, sample_sampler,
                sample_scheduler, sample_width, sample_height, reuse=True, blocks_to_swap=0,
                **widgets) -> io.NodeOutput:
        for name, options in CHOICES.items():  # ComfyUI does not check V3 combo values; refuse before any work
            check_choice(widgets[name], options, name)
        check_choice(sample_sampler, comfy.samplers.KSampler.SAMPLERS, "sample_sampler")
        check_choice(sample_scheduler, comfy.samplers.KSampler.SCHEDULERS, "sample_scheduler")
        config, net_overrides, imported = config_from(widgets, config_json)
        config.validate()
        lines = lambda text: tuple(line.strip() for line in text.splitlines() if line.strip())
        net = NetworkConfig(**{k: widgets[k] for k in NETWORK_TOOLTIPS} | (net_overrides or {}),
                            target_patterns=lines(target_patterns),
                            exclude_patterns=lines(exclude_patterns),
                            rank_overrides=parse_rank_overrides(rank_overrides))
        sampling = {"prompts": [p.strip() for p in sample_prompts.splitlines() if p.strip()],
                    "negative": sample_negative, "seed": sample_seed, "steps": sample_steps, "cfg": sample_cfg,
                    "sampler": sample_sampler, "scheduler": sample_scheduler, "width": sample_width,
                    "height": sample_height}
        model_out, clip_out, losses, report, files = train_lora(
            model, clip, vae, dataset, output_name, config, net, node_id=cls.hidden.unique_id if cls.hidden else None,
            resume_state=resume_state, continue_from=continue_from, keep_last=keep_last, sampling=sampling,
            cache_latents=cache_latents, gradient_checkpointing=gradient_checkpointing, advanced=True,
            prompt=cls.hidden.prompt if cls.hidden else None, reuse=reuse is True,
            blocks_to_swap=int(check_number("blocks_to_swap", blocks_to_swap, 0, MAX_SWAP)))
        if imported:  # a kohya config: which keys mapped, which were off, unknown or have no equivalent here
            report["config_import"] = imported
        report["kohya_config"] = export_kohya(config, net)  # the same run as sd-scripts keys (Export Kohya Config)
        return training_result(model_out, clip_out, losses, report, files)


NODES = [AtelierTrainLoRA, AtelierTrainLoRAAdvanced]
