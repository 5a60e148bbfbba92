"""Everything that differs between the ComfyUI versions Atelier runs on, each behind a feature test.

Nothing here compares version strings: each function asks the running host whether it has the behaviour. The README's
"ComfyUI versions" list names the upstream files and commits each test was checked against.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import warnings

import torch

# The versioned module, not comfy_api.latest (STABLE = False, it moves): v0_0_2 re-exports the same `io` and
# ComfyExtension in 0.3.64 and upstream. Every node imports them from here, so a later switch is one line.
from comfy_api.v0_0_2 import ComfyExtension, io  # noqa: F401 - re-exported for nodes/

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import folder_paths

# --- Cancel ------------------------------------------------------------------------------------------------------


def cancel_requested() -> bool:
    """True once the user pressed Cancel, read from ComfyUI's flag itself (upstream throttles progress updates, so a
    progress update raising is never how a loop learns of a cancel)."""
    return comfy.model_management.processing_interrupted()


def is_interrupt(error: BaseException) -> bool:
    """Whether `error` is ComfyUI's cancel (an Exception in 0.3.64, a BaseException upstream)."""
    return isinstance(error, comfy.model_management.InterruptProcessingException)


def show_stop_message(node_id, message: str, event: str, data: dict) -> None:
    """Shows why and where a run stopped on the channels every version keeps: a websocket event for web/ and the
    node's progress text; the caller then raises a RuntimeError with the same message (its text reaches the error
    dialog and /history, where an InterruptProcessingException's text is dropped in 0.3.64 and upstream)."""
    try:
        from server import PromptServer
    except ImportError:  # outside a server (scripts, tests): nothing to show it on
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return
    server.send_sync(event, data)
    send_text = getattr(server, "send_progress_text", None)  # the node's text line, where the server has one
    if callable(send_text) and node_id is not None:
        send_text(message, node_id)


# --- Model patchers ----------------------------------------------------------------------------------------------

DYNAMIC_VRAM_FIX = ("Restart ComfyUI with --disable-dynamic-vram (the classic ModelPatcher keeps the weights "
                    "loaded), or run this on a ComfyUI that does not load weights dynamically.")


def is_dynamic(patcher) -> bool:
    """Whether `patcher` streams its weights at run time (upstream's ModelPatcherDynamic, installed as
    CoreModelPatcher, answers is_dynamic() True; 0.3.64's ModelPatcher has no such method)."""
    test = getattr(patcher, "is_dynamic", None)
    return bool(test()) if callable(test) else False


def resident_patcher(patcher, what: str):
    """A clone of `patcher` whose weights can be loaded whole and patched in place (training thaws them, a merge bakes
    patches into them): a plain patcher's own clone, or for a dynamic-VRAM patcher upstream's non-dynamic delegate
    (as its CFGGuider does for hooked conds): a ModelPatcher over a resident copy of the model with the same patches
    and options, so the input patcher and its streamed weights are never touched."""
    if not is_dynamic(patcher):
        return patcher.clone()
    delegate = getattr(patcher, "get_non_dynamic_delegate", None)
    if callable(delegate):
        resident = delegate()
    else:  # upstream's TorchCompileModel way, where a patcher has no delegate method
        try:
            resident = patcher.clone(disable_dynamic=True)
        except TypeError:  # a dynamic patcher that offers neither way: nothing here can load its weights
            resident = patcher
    meta = next((n for n, p in resident.model.named_parameters() if p.is_meta), None) if resident is not patcher \
        else None
    if is_dynamic(resident) or meta is not None:
        found = f"weight '{meta}' is not loaded (meta)" if meta else f"{type(patcher).__name__} has no resident copy"
        raise RuntimeError(f"{what} needs the model's weights loaded in memory, but this ComfyUI loads them "
                           f"dynamically (dynamic VRAM) and {found}. {DYNAMIC_VRAM_FIX}")
    return resident


def resident_clip(clip, what: str):
    """A clone of CLIP over a resident text-encoder patcher (resident_patcher), its cond_stage_model the patcher's own
    model so text-encoder LoRA modules, thaw and encoding all act on the weights that are loaded."""
    out = clip.clone()
    if is_dynamic(clip.patcher):
        out.patcher = resident_patcher(clip.patcher, what)
        out.cond_stage_model = out.patcher.model
    return out


# --- Folder types ------------------------------------------------------------------------------------------------


def register_folder(folder_type: str, default_path: str) -> list[str]:
    """Registers `folder_type` at default_path unless the host already registers that type (upstream has a built-in
    `datasets`): then its roots are used as they are, so the dropdown never lists a second default root."""
    if folder_type not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(folder_type, default_path)
    return folder_paths.get_folder_paths(folder_type)


# --- How a sampler draws noise -----------------------------------------------------------------------------------

PROBE_SIGMAS = (14.6, 3.0, 1.0, 0.3, 0.0)  # a short real SD schedule: 4 steps, ends at 0 like ComfyUI's


class _SDSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    """SD1.x's model sampling, as ComfyUI builds it for an eps model."""


class _ProbeModel:
    """A denoiser that shrinks its input by σ (deterministic, no parameters), shaped like the wrapped model that
    k-diffusion samplers receive: inner_model.inner_model.model_sampling and inner_model.model_patcher."""

    def __init__(self):
        sampling = _SDSampling()
        inner = type("Inner", (), {})()
        inner.model_sampling, inner.inner_model = sampling, inner
        inner.model_patcher = type("Patcher", (), {"get_model_object": lambda self, name: sampling})()
        self.inner_model = inner

    def __call__(self, x, sigma, model_options=None, seed=None, **_):
        denoised = x / (1 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2)
        for post_cfg in (model_options or {}).get("sampler_post_cfg_function", []):  # the *_cfg_pp samplers
            denoised = post_cfg({"denoised": denoised, "cond_denoised": denoised, "uncond_denoised": denoised * 0.9,
                                 "sigma": sigma, "input": x, "model": None, "model_options": model_options,
                                 "cond": None, "uncond": None, "cond_scale": 1.0})
        return denoised


def _run_probe(sampler: str, seed: int, noise_sampler=None) -> torch.Tensor:
    fn = comfy.samplers.sampler_object(sampler).sampler_function
    x = torch.full((1, 4, 4, 4), PROBE_SIGMAS[0])  # (B, C, h, w) latent at the first σ
    extra = {} if noise_sampler is None else {"noise_sampler": noise_sampler}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde warns about float rounding at the tree's end point
        return fn(_ProbeModel(), x, torch.tensor(PROBE_SIGMAS), extra_args={"seed": seed, "model_options": {}},
                  callback=None, disable=True, **extra)


@functools.cache
def noise_mode(sampler: str) -> str:
    """How `sampler` draws noise, observed by running it on a tiny fake model: 'fixed' (the result does not depend on
    the noise seed: noise only at the start), 'per_sample' (a per-step default noise sampler that one generator per
    sample reproduces exactly) or 'single' (its own scheme, e.g. a Brownian tree over the whole batch)."""
    with torch.inference_mode():
        first, second = _run_probe(sampler, 1), _run_probe(sampler, 2)
        if torch.equal(first, second):
            return "fixed"
        if "noise_sampler" not in inspect.signature(comfy.samplers.sampler_object(sampler).sampler_function).parameters:
            return "single"  # draws noise we cannot hand it
        generator = torch.Generator().manual_seed(1)  # ComfyUI's default noise sampler, seeded as the run was
        replayed = _run_probe(sampler, 1, lambda s, s_next: torch.randn(first.shape, generator=generator))
    mode = "per_sample" if torch.equal(first, replayed) else "single"
    logging.debug("[Atelier] sampler %s draws noise as %s", sampler, mode)
    return mode


def default_datasets_root() -> str:
    """Where Atelier put `datasets` before the host had its own: models/datasets."""
    return os.path.join(folder_paths.models_dir, "datasets")
