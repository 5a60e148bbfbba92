"""The command line that trains an exported job headless, alone or under torchrun, loading the base model through
ComfyUI as a library:

    python -m atelier.nodes.job run output/atelier/jobs/my_lora --comfyui ~/ComfyUI [--device cuda] [--out DIR]
    torchrun --nproc-per-node 2 -m atelier.nodes.job run output/atelier/jobs/my_lora --comfyui ~/ComfyUI
    ... run JOB --comfyui ~/ComfyUI --blocks-to-swap 20 --gradient-checkpointing   (override the job's memory settings)

Why it lives in nodes/: the job's base model is a ComfyUI checkpoint and it must be loaded exactly as the node
loaded it (comfy.sd detects the family, ComfyDenoiser calls it), and only nodes/ may import ComfyUI. The pure
runner (trainers/job.py) trains from the folder and a JobModel; this module builds that JobModel. Nothing of
ComfyUI is imported at module level: `--comfyui` is put on sys.path and ComfyUI's options (CPU or GPU) are set
first, then comfy is imported; the package `nodes` itself imports nothing of ComfyUI (see nodes/extension.py).
The checkpoint is found by the name the job recorded, in that ComfyUI's checkpoint folders (or given with
--checkpoint), and its sha256 must equal the recorded one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..core.provenance import file_hashes
from ..trainers.distributed import from_environment, leave, local_device
from ..trainers.job import (Job, JobModel, TerminalProgress, check_blocks_to_swap, needs_text_encoder, read_job,
                            run_job)
from ..trainers.memory import MAX_SWAP


def setup_comfy(comfyui: Path | None, device: torch.device) -> None:
    """Makes the ComfyUI checkout importable and sets its options before its model management is imported."""
    if comfyui is not None:
        if not (comfyui / "comfy" / "sd.py").is_file():
            raise SystemExit(f"--comfyui '{comfyui.name}' is not a ComfyUI checkout (it has no comfy/sd.py); give "
                             "the folder that holds main.py and comfy/.")
        sys.path.insert(0, str(comfyui))
    from comfy.cli_args import args

    args.cpu = device.type == "cpu"  # ComfyUI's --cpu: the library defaults to a GPU


def checkpoint_path(job: Job, given: Path | None) -> Path:
    """The checkpoint file of the job's base model: --checkpoint, else its name in ComfyUI's checkpoint folders;
    its sha256 must match the job's record."""
    import folder_paths

    name = job.base.get("file")
    if given is None:
        found = folder_paths.get_full_path(job.base.get("folder") or "checkpoints", name) if name else None
        if found is None:
            raise SystemExit(f"The job was exported from checkpoint '{name or 'unknown'}', which is not in this "
                             "ComfyUI's checkpoint folders; pass its file with --checkpoint FILE.")
        given = Path(found)
    expected = job.base.get("sha256")
    if expected and file_hashes(given)["sha256"] != expected:
        raise SystemExit(f"Checkpoint '{given.name}' is not the base model of job '{job.folder.name}' (sha256 "
                         f"{expected[:12]}… expected); pass the file it was exported from with --checkpoint.")
    return given


def comfy_job_model(job: Job, path: Path) -> tuple[JobModel, object, list]:
    """The job's base model loaded through ComfyUI: the UNet (and text encoders when they train) as LoRA roots,
    ComfyDenoiser, and the caption encoder when the job carries no frozen embeddings; with its ModelPatcher and the
    contexts training needs around it (the text encoders' out-of-place residuals when they train, as the node)."""
    import comfy.model_management
    import comfy.sd

    from .compat import resident_clip, resident_patcher
    from .train_adapter import ComfyDenoiser, autograd_friendly_clip, make_encoder, text_encoder_roots, thaw

    text = needs_text_encoder(job.config)
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=text)
    # a ComfyUI that loads weights dynamically (dynamic VRAM) hands out patchers that refuse full loads and thaw
    model = resident_patcher(model, "Training a job")
    clip = resident_clip(clip, "Training a job's text encoder") if job.config.train_text_encoder else clip
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    thaw(model.model.diffusion_model)
    roots = {"lora_unet": model.model.diffusion_model}
    if job.config.train_text_encoder:
        clip.load_model()
        thaw(clip.cond_stage_model)
        roots.update(text_encoder_roots(clip, t5=job.config.train_t5))
    denoise = ComfyDenoiser(model)
    return JobModel(roots, denoise, denoise.model_sampling, next(model.model.diffusion_model.parameters()).device,
                    make_encoder(clip, pooled=denoise.needs_pooled) if text else None,
                    str(model.model.get_dtype())), model, \
        [autograd_friendly_clip(clip.cond_stage_model)] if job.config.train_text_encoder else []


def memory_contexts(job: Job, model: JobModel, patcher, stream) -> list:
    """The job's gradient checkpointing and block swap, built by the training node's own memory_savers, each said in
    one line on `stream` (None on ranks other than 0)."""
    from .training import HostModel, memory_savers

    host = HostModel(patcher, model.roots, model.denoise, model.device)
    contexts, note = memory_savers(host, job.gradient_checkpointing, job.blocks_to_swap)
    if stream is not None and job.gradient_checkpointing:
        print("Gradient checkpointing: on", file=stream)
    if stream is not None and note:
        extra = f" ({note['note']})" if "note" in note else ""
        print(f"Block swap: {note['blocks']} of {note['of']} blocks, {note['offloaded_mib']} MiB of frozen weights "
              f"kept on {note['to']}{extra}", file=stream)
    return contexts


def swap_count(text: str) -> int:
    """--blocks-to-swap's value, checked like job.json's blocks_to_swap."""
    try:
        return check_blocks_to_swap(int(text), "--blocks-to-swap")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SWAP} (0 turns block swap off), "
                                         f"got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m atelier.nodes.job", description="Train an exported Atelier job.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a job folder (output/atelier/jobs/<name>)")
    run.add_argument("job", type=Path, help="the job folder")
    run.add_argument("--comfyui", type=Path, help="the ComfyUI checkout to load the base model with")
    run.add_argument("--checkpoint", type=Path, help="the base model file, when not in ComfyUI's checkpoints")
    run.add_argument("--out", type=Path, help="where the LoRA and state/ go (default: the job folder)")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    run.add_argument("--resume", action="store_true", help="continue from <out>/state/<name> (any world size)")
    run.add_argument("--log", type=Path, help="JSON-lines step log (default: <out>/<name>.steps.jsonl)")
    run.add_argument("--blocks-to-swap", type=swap_count, metavar="N",
                     help="block swap: keep the frozen weights of the last N blocks on the offload device (overrides "
                          "the job's blocks_to_swap; 0 turns it off)")
    run.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                     help="recompute block activations in backward (overrides the job's gradient_checkpointing)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    device = local_device(a.device)
    setup_comfy(a.comfyui.expanduser().resolve() if a.comfyui else None, device)
    job = read_job(a.job)
    if a.blocks_to_swap is not None:
        job.blocks_to_swap = a.blocks_to_swap
    if a.gradient_checkpointing is not None:
        job.gradient_checkpointing = a.gradient_checkpointing
    distributed = from_environment(device)
    out = a.out or a.job
    progress = None
    if distributed is None or distributed.is_writer:
        out.mkdir(parents=True, exist_ok=True)
        progress = TerminalProgress(a.log or out / f"{job.name}.steps.jsonl", sys.stderr)
    try:
        with torch.inference_mode(False):
            model, patcher, contexts = comfy_job_model(job, checkpoint_path(job, a.checkpoint))
            try:
                contexts += memory_contexts(job, model, patcher, sys.stderr if progress is not None else None)
            except ValueError as e:  # more blocks to swap than the model has: one clear line, no traceback
                raise SystemExit(f"{e} It comes from {job.folder.name}/job.json's memory or --blocks-to-swap.")
            result = run_job(a.job, model, out=out, resume=a.resume, on_step=progress, distributed=distributed,
                             contexts=contexts)
    finally:
        leave()
    if progress is not None:
        print(f"Saved {job.name}.safetensors after {result.state.step} steps in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
