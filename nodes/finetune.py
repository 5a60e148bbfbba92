"""Full fine-tune (DreamBooth) node: the UNet's (and optionally the text encoder's) own weights trained on a private
copy, saved as a whole checkpoint that CheckpointLoaderSimple loads. The maths is trainers/finetune.py."""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors import safe_open
from .compat import io

import comfy.model_management

from ..core.draw import line_chart, pil_to_image_tensor
from ..core.lora_format import GENERIC_TE_PREFIX
from ..core.lora_io import write_safetensors
from ..core.lora_meta import subsets_record
from ..trainers.finetune import FullFineTune, parse_block_lrs
from ..trainers.loop import PRECISIONS, Trainer, TrainConfig
from ..trainers.memory import gradient_checkpointing as checkpointed
from ..trainers.optim import OPTIMIZERS
from ..trainers.run import RunFiles
from .host import model_file, model_output_path
from .lora_tools import extract_lora
from .provenance import base_model
from .train_adapter import CLIP_ENCODERS, autograd_friendly_clip, text_encoder_roots
from .training import (STATE_NONE, TrainingEvents, checkpoint_blocks, common_inputs, encoded_dataset, host_run,
                       host_trainer, lora_output_path, resume_folder, resume_hint, resume_options, run_in_host, shown,
                       state_root, trainable_host)
from .validate import check_choice, check_names

UNET_PREFIX = "diffusion_model."  # the UNet's keys in the MODEL patcher's state dict (BaseModel.diffusion_model)


def te_roots(clip) -> dict[str, tuple[torch.nn.Module, str]]:
    """Short prefix ("te", "te1", "te2") -> (text encoder module, its key prefix in the CLIP patcher's state dict)."""
    names = {id(m): n for n, m in clip.cond_stage_model.named_modules()}
    csm = clip.cond_stage_model
    # a lone T5-XXL (Chroma) trains as a LoRA (train_t5); Qwen2.5-VL / umT5 LoRAs use ComfyUI's generic keys; a full
    # fine-tune of either is not built yet
    lone_t5 = getattr(csm, "t5xxl", None) is not None and not any(getattr(csm, n, None) is not None
                                                                   for n in CLIP_ENCODERS)
    roots = {} if lone_t5 else text_encoder_roots(clip)
    other = "t5xxl" if lone_t5 else next((p.split(".")[1] for p in roots if p.startswith(GENERIC_TE_PREFIX)), None)
    if other:
        raise ValueError(f"Full fine-tune trains CLIP text encoders only; this CLIP's is {other} "
                         f"({type(clip.cond_stage_model).__name__}). Turn train_text_encoder off to fine-tune the "
                         "diffusion model only, or train a LoRA (Train LoRA Advanced trains this text encoder).")
    return {prefix.removeprefix("lora_"): (module, names[id(module)] + ".")
            for prefix, module in roots.items()}


def left_out_tensors(base, sd: dict) -> dict[str, torch.Tensor]:
    """Tensors of the base checkpoint file that ComfyUI's saving layout leaves out (SD1's unused text_projection),
    so the new file holds the whole original; none when the file is unknown or its layout differs otherwise."""
    if not base.file or base.folder != "checkpoints" or not base.file.endswith(".safetensors"):
        return {}
    with safe_open(str(model_file("checkpoints", base.file)), "pt") as f:
        keys = list(f.keys())
        missing = [k for k in keys if k not in sd]
        if len(missing) > max(8, len(keys) // 100):  # another key layout (not ComfyUI's): adding would duplicate
            return {}
        return {k: f.get_tensor(k) for k in missing}


def checkpoint_writer(tune: FullFineTune, host, clip, vae, base):
    """write(path, tensors, metadata): ComfyUI's own checkpoint layout (BaseModel.state_dict_for_saving over the
    MODEL, CLIP and VAE, as comfy.sd.save_checkpoint) with the trained tensors in place, written atomically."""
    def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        with tune.installed(tensors):  # the modules hold the shipped weights only while the dict is built
            sd = host.patcher.model.state_dict_for_saving(clip.get_sd(), vae.get_sd(), None)
            sd.update(left_out_tensors(base, sd))
            # NaN/inf are refused inside write_safetensors (nothing written); the last cancel check comes before
            # the rename, so a cancelled save leaves no file
            write_safetensors(path, {k: t.contiguous() for k, t in sd.items()}, metadata, what="checkpoint",
                              before_replace=comfy.model_management.throw_exception_if_processing_interrupted)
    return write


def finetune_metadata(config: TrainConfig, block_lrs: str, dataset, path: Path, base, trainer: Trainer):
    """metadata(step, epoch): the base checkpoint (name + sha256), the dataset's subsets and the settings."""
    started = time.time()

    def metadata(step: int, epoch: int) -> dict[str, str]:
        return {"modelspec.title": path.stem, "atelier_kind": "full_finetune",
                "atelier_base_model": json.dumps(base.record()), "atelier_base_checkpoint": base.name,
                "atelier_base_sha256": base.sha256, "atelier_subsets": subsets_record(dataset),
                "atelier_settings": json.dumps({**config.to_dict(), "block_lrs": block_lrs}),
                "atelier_steps": str(step), "atelier_total_steps": str(trainer.total_steps),
                "atelier_epoch": str(epoch), "atelier_started": str(int(started)),
                "atelier_saved": str(int(time.time()))}
    return metadata


def patched_outputs(model, clip, shipped: dict[str, torch.Tensor], te: dict) -> tuple:
    """Clones of MODEL and CLIP with the trained weights as "set" patches: the inputs keep rendering as before."""
    model_out = model.clone()
    model_out.add_patches({UNET_PREFIX + k.removeprefix("unet."): ("set", (t,)) for k, t in shipped.items()
                           if k.startswith("unet.")}, 1.0, 1.0)
    clip_out = clip
    te_patches = {te[k.split(".", 1)[0]][1] + k.split(".", 1)[1]: ("set", (t,)) for k, t in shipped.items()
                  if k.split(".", 1)[0] in te}
    if te_patches:
        clip_out = clip.clone()
        clip_out.add_patches(te_patches, 1.0, 1.0)
    return model_out, clip_out


def train_full(model, clip, vae, dataset, output_name: str, config: TrainConfig, *, block_lrs: str = "",
               gradient_checkpointing: bool = False, resume: str = STATE_NONE, extract_rank: int = 0,
               node_id=None, prompt=None):
    """The node's body: host wiring around trainers.run with a FullFineTune; returns (model, clip, losses, report)."""
    check_names(output_name=output_name)
    path = model_output_path("checkpoints", output_name, "output_name")  # refuse a bad name before any work
    if extract_rank:
        lora_output_path(f"{path.stem}_extracted")
    config.validate()
    rules = parse_block_lrs(block_lrs)
    resume_dir = resume_folder(resume)
    base = base_model(model, prompt, node_id)
    te = te_roots(clip) if config.train_text_encoder else {}  # refused before any loading; thaw keeps the modules
    with torch.inference_mode(False):
        # the checkpoint holds the CLIP's weights: a dynamic-VRAM CLIP is read from (and trains on) a resident copy
        host = trainable_host(model, clip, config.train_text_encoder, clip_weights=True)
        te = te_roots(host.clip) if te else {}  # the modules that train: the resident copy's where one was made
        host.clip.load_model()  # CLIP patches (a LoRA upstream) are in its weights before any checkpoint is written
        tune = FullFineTune({"unet": host.patcher.model.diffusion_model, **{k: m for k, (m, _) in te.items()}},
                            rules).to(host.device)
        host.denoise.dtype = torch.float32  # the private master weights are float32 whatever the model loaded as
        samples, skipped, cache = encoded_dataset(dataset, vae, host, config, True, node_id)
        events = TrainingEvents(node_id, path.stem, host, host.clip, vae, None)
        trainer = host_trainer(config, tune, host, samples, events)
        run = host_run(trainer, host, RunFiles(path, state_root() / f"{path.stem}-finetune", 0, shown),
                       finetune_metadata(config, block_lrs, dataset, path, base, trainer), export_dtype=None,
                       write=checkpoint_writer(tune, host, host.clip, vae, base))
        blocks = checkpoint_blocks(host.patcher.model.diffusion_model) if gradient_checkpointing else []
        contexts = [autograd_friendly_clip(host.clip.cond_stage_model) if te else nullcontext(), checkpointed(blocks)]
        result = run_in_host(run, events, lambda state_dir: resume_hint(state_dir, True, "resume"), "checkpoints",
                             resume_dir, contexts)
        model_out, clip_out = patched_outputs(model, clip, result.shipped, te)
    report = {"checkpoint": shown(path), "saved": [shown(p) for p in result.saved], "state": shown(result.state_dir),
              "steps": result.state.step, "epochs": result.state.epoch, "base": base.record(),
              "trained_tensors": len(tune.trained_keys(config.train_text_encoder)),
              "config": config.to_dict(), "block_lrs": [list(r) for r in rules],
              "skipped": [f"{s.path}: {s.reason}" for s in skipped], "losses": result.state.losses,
              "warnings": result.warnings}
    if extract_rank:
        name = f"{path.stem}_extracted"
        text, _ = extract_lora(model_out, model, clip_out if te else None, clip if te else None, rank=extract_rank,
                               output_name=name)
        report["extracted_lora"] = shown(lora_output_path(name))
        report["extract_energy"] = text.split("\n", 1)[-1]
    return model_out, clip_out, result.state.losses, report


class AtelierTrainFullFineTune(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        inputs = common_inputs()
        inputs[4] = io.String.Input("output_name", default="my_finetune",
                                    tooltip="Checkpoint name in models/checkpoints/atelier (no folders, no '..').")
        return io.Schema(
            node_id="AtelierTrainFullFineTune",
            display_name="Train Full Fine-Tune (Atelier)",
            category="atelier/training",
            description="DreamBooth / full fine-tune: trains the UNet's own weights (optionally the text encoder's) "
                        "on a private copy and saves a whole checkpoint (UNet + CLIP + VAE) to "
                        "models/checkpoints/atelier; regularisation subsets give prior preservation.",
            inputs=[
                *inputs,
                io.Float.Input("unet_lr", default=2e-6, min=0.0, max=1.0, step=1e-7,
                               tooltip="UNet learning rate; the guides' full fine-tunes use 3e-6 then 2e-6."),
                io.Boolean.Input("train_text_encoder", default=False,
                                 tooltip="Also fine-tune the text encoder's weights (more memory)."),
                io.Float.Input("te_lr", default=1e-6, min=0.0, max=1.0, step=1e-7,
                               tooltip="Text-encoder learning rate when train_text_encoder is on."),
                io.Int.Input("epochs", default=10, min=1, max=100_000, tooltip="Passes over the dataset (repeats)."),
                io.Int.Input("max_steps", default=0, min=0, max=10_000_000,
                             tooltip="Stop after this many optimizer steps; 0 = train for `epochs`."),
                io.Int.Input("batch_size", default=1, min=1, max=1024, tooltip="Images per step."),
                io.Combo.Input("optimizer", options=list(OPTIMIZERS), default="adamw",
                               tooltip="adamw (default), adafactor (far less optimizer memory), lion or sgd."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="fp32",
                               tooltip="fp32 (exact, CPU), bf16 (GPU, recommended) or fp16 (GPU, with loss "
                                       "scaling); the trained weights stay float32 either way."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute block activations during backward: much less memory for ~30% "
                                         "more time; same result."),
                io.Float.Input("ema_decay", default=0.0, min=0.0, max=0.99999, step=1e-4,
                               tooltip="Save an exponential moving average of the weights (e.g. 0.999); 0 = off."),
                io.String.Input("block_lrs", default="", multiline=True,
                                tooltip="Block-wise learning rates, one 'regex = multiplier' per line on "
                                        "'unet.<layer>' / 'te.<layer>', e.g. 'input_blocks = 0.5' or "
                                        "'time_embed = 0' (0 freezes); first match wins, others train at 1×."),
                io.Int.Input("seed", default=0, control_after_generate=False, min=0, max=2**31 - 1,
                             tooltip="Same seed, same data: the same weights (deterministic on CPU)."),
                io.Int.Input("save_every_epochs", default=0, min=0, max=100_000,
                             tooltip="Also save name-00000N.safetensors every N epochs (a whole checkpoint each); "
                                     "0 = final file only."),
                io.Combo.Input("resume", options=resume_options(), default=STATE_NONE,
                               tooltip="Continue an interrupted run from its state (output/atelier/train_state/"
                                       "<name>-finetune) with the same settings."),
                io.Int.Input("extract_rank", default=0, min=0, max=1024,
                             tooltip="Also write a LoRA of the difference (models/loras/atelier/<name>_extracted) "
                                     "with this rank through Extract LoRA; 0 = off."),
            ],
            outputs=[io.Model.Output("model_out", display_name="model", tooltip="A clone with the trained weights."),
                     io.Clip.Output("clip_out", display_name="clip", tooltip="The CLIP (trained when the text encoder "
                                                                            "was trained)."),
                     io.Image.Output("loss_chart", tooltip="Loss per step (raw and smoothed)."),
                     io.String.Output("report", tooltip="JSON: checkpoint, state, steps, losses, base, settings.")],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, output_name, unet_lr, train_text_encoder, te_lr, epochs, max_steps,
                batch_size, optimizer, precision, gradient_checkpointing, ema_decay, block_lrs, seed,
                save_every_epochs, resume, extract_rank) -> io.NodeOutput:
        check_choice(optimizer, OPTIMIZERS, "optimizer")  # ComfyUI does not check V3 combo values
        check_choice(precision, PRECISIONS, "precision")
        config = TrainConfig(epochs=epochs, max_steps=max_steps, batch_size=batch_size, unet_lr=unet_lr, te_lr=te_lr,
                             train_text_encoder=train_text_encoder, optimizer=optimizer, precision=precision,
                             ema_decay=ema_decay, seed=seed, save_every_epochs=save_every_epochs, weight_decay=0.0)
        model_out, clip_out, losses, report = train_full(
            model, clip, vae, dataset, output_name, config, block_lrs=block_lrs,
            gradient_checkpointing=gradient_checkpointing, resume=resume, extract_rank=extract_rank,
            node_id=cls.hidden.unique_id if cls.hidden else None, prompt=cls.hidden.prompt if cls.hidden else None)
        chart = pil_to_image_tensor([line_chart(losses, title=f"loss: {report['steps']} steps")])
        text = json.dumps(report, indent=1)
        return io.NodeOutput(model_out, clip_out, chart, text, ui={"text": [text]})


NODES = [AtelierTrainFullFineTune]
