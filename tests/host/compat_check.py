"""Run inside ComfyUI's Python: exercises each path of nodes/compat.py on this host.

Where 0.3.64 cannot show upstream's behaviour, a test double replaces ONLY that behaviour (named `Upstream...` below):
a ModelPatcher that answers is_dynamic() True, refuses full loads and hands out a non-dynamic delegate (upstream's
ModelPatcherDynamic), a ProgressBar whose hook never runs (upstream throttles updates), and a pre-registered
`datasets` folder type as upstream's folder_paths.py registers it. Everything else is the real host.
Prints one JSON line. usage: python compat_check.py ATELIER_CHECKOUT FIXTURE_CHECKPOINT   (cwd: the ComfyUI checkout)
"""

import copy
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, os.getcwd())
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import torch  # noqa: E402

import comfy.lora  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.samplers  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402

sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import conftest  # noqa: E402,F401  registers the Atelier checkout as the package `atelier` (as the test suite does)
from atelier.nodes import compat, extension, host, lora_tools, training  # noqa: E402,F401  extension registers
from atelier.trainers.loop import Trainer, TrainConfig, TrainSample  # noqa: E402
from atelier.trainers.network import NetworkConfig  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import family_check  # noqa: E402  its tiny UNet config (importing it runs nothing)

out = {}


def source_text_mode(sampler: str) -> str:
    """The answer cells.noise_mode gave before the probe: a search of the sampler's source text (kept here only to
    compare the two on this host)."""
    fn = comfy.samplers.sampler_object(sampler).sampler_function
    try:
        if "noise_sampler" not in inspect.signature(fn).parameters:
            return "fixed"
        source = inspect.getsource(fn)
    except (TypeError, ValueError, OSError):
        return "single"
    return "per_sample" if "default_noise_sampler" in source and "BrownianTree" not in source else "single"


# 1. The V3 API: the versioned module hands out the very objects comfy_api.latest has on this host.
import comfy_api.latest  # noqa: E402

out["io_is_latest"] = compat.io is comfy_api.latest.io and compat.ComfyExtension is comfy_api.latest.ComfyExtension

# 2. Every sampler ComfyUI lists: the behavioural probe against the old source-text answer.
out["samplers"] = {name: {"probe": compat.noise_mode(name), "source_text": source_text_mode(name)}
                   for name in comfy.samplers.KSampler.SAMPLERS}
out["probe_cached"] = compat.noise_mode.cache_info().hits == 0 and compat.noise_mode("euler") == "fixed" \
    and compat.noise_mode.cache_info().hits == 1

# 3. Cancel: read from the flag, which stays set for ComfyUI's own checks.
comfy.model_management.interrupt_current_processing(True)
out["cancel_seen"] = compat.cancel_requested()
out["flag_kept"] = comfy.model_management.processing_interrupted()
try:
    comfy.model_management.throw_exception_if_processing_interrupted()
except BaseException as error:  # an Exception in 0.3.64, a BaseException upstream
    out["is_interrupt"] = compat.is_interrupt(error)
out["is_interrupt_other"] = compat.is_interrupt(RuntimeError("x"))


class UpstreamThrottledBar:
    """Test double of upstream's throttled ProgressBar: updates inside the interval never reach the hook."""

    def update_absolute(self, value, total=None, preview=None):
        pass


events = training.TrainingEvents("9", "compat_check", None, None, None, None)
events.bar = UpstreamThrottledBar()
step = SimpleNamespace(step=3, total_steps=10, epoch=1, loss=0.5, smoothed_loss=0.5, lr=1e-4, samples_per_second=1.0,
                       skipped=0, skipped_steps=0)
comfy.model_management.interrupt_current_processing(True)
events.on_step(step)
out["throttled_cancel_stops"] = events.should_stop()
comfy.model_management.interrupt_current_processing(False)

events = training.TrainingEvents("9", "compat_check_real_bar", None, None, None, None)  # 0.3.64's own bar
events.on_step(step)
out["no_cancel_no_stop"] = not events.should_stop()
comfy.model_management.interrupt_current_processing(True)
events.on_step(step)
out["real_bar_cancel_stops"] = events.should_stop()
comfy.model_management.interrupt_current_processing(False)


# 4. Dynamic-VRAM patchers. 0.3.64 has no ModelPatcherDynamic, so a test double models what matters of upstream's
#    (comfy/model_patcher.py): is_dynamic() True, load() refusing full loads and forced patches (its asserts), clone()
#    keeping the class, and get_non_dynamic_delegate() giving a plain ModelPatcher over a fresh resident copy of the
#    model (upstream reloads the file through cached_patcher_init) with the same patches and options. Unlike upstream,
#    the double lives on the CPU (upstream hands CPU devices a plain ModelPatcher). Everything else is the real host.
class UpstreamDynamicPatcher(comfy.model_patcher.ModelPatcher):
    """Test double of upstream's ModelPatcherDynamic (see above)."""

    def is_dynamic(self):
        return True

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        assert not force_patch_weights, "ModelPatcherDynamic.load: force_patch_weights"  # upstream's asserts
        assert not full_load, "ModelPatcherDynamic.load: full_load"
        return super().load(device_to, lowvram_model_memory, force_patch_weights, full_load)

    def get_non_dynamic_delegate(self):
        plain = comfy.model_patcher.ModelPatcher.clone(self)  # same patches, options, wrappers
        plain.__class__ = comfy.model_patcher.ModelPatcher
        plain.model = copy.deepcopy(self.model)  # a fresh resident model, as upstream's reload gives
        plain.backup, plain.object_patches_backup = {}, {}
        return plain


def sd15(patcher_class):
    """A tiny SD1.x-shaped model (same seed, same weights every call) under `patcher_class`."""
    config = comfy.supported_models.SD15(dict(family_check.UNET_SD, context_dim=768, adm_in_channels=None))
    torch.manual_seed(0)
    model = config.get_model({})
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.02)
    return patcher_class(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def train_lora(patcher) -> dict:
    """Three LoRA steps through the nodes' wiring (trainable_host, lora_network, the Trainer, checkpointed blocks)."""
    g = torch.Generator().manual_seed(1)
    texts = {f"caption {i}": torch.randn(1, 77, 768, generator=g) for i in range(2)}
    samples = [TrainSample(latent=torch.randn(4, 8, 8, generator=g), caption=f"caption {i}") for i in range(2)]
    with torch.inference_mode(False):
        host = training.trainable_host(patcher, None, False)
        network, _ = training.lora_network(host, NetworkConfig(rank=4, alpha=4.0), seed=0, continue_from="(none)")
        trainer = Trainer(TrainConfig(max_steps=3, batch_size=2, unet_lr=1e-2, save_every_epochs=0), network,
                          host.denoise, host.denoise.model_sampling, samples,
                          lambda captions: (torch.cat([texts[c] for c in captions]), {}))
        with training.checkpointed(training.checkpoint_blocks(host.patcher.model.diffusion_model)):
            state = trainer.run()
        network.remove()
    return {"steps": state.step, "lora": network.kohya_state_dict(torch.float32), "host": host}


def frozen_snapshot(patcher):
    return ({k: v.clone() for k, v in patcher.model.state_dict().items()},
            any(p.requires_grad for p in patcher.model.parameters()), sorted(patcher.patches))


real, dynamic = sd15(comfy.model_patcher.ModelPatcher), sd15(UpstreamDynamicPatcher)
out["real_is_dynamic"] = compat.is_dynamic(real)
out["double_is_dynamic"] = compat.is_dynamic(dynamic) and compat.is_dynamic(dynamic.clone())
try:  # what the old code did (a full load of the patcher itself): the double refuses it as upstream does
    comfy.model_management.load_models_gpu([dynamic.clone()], force_full_load=True)
    out["double_refuses_full_load"] = ""
except AssertionError as error:
    out["double_refuses_full_load"] = str(error)
before = frozen_snapshot(dynamic)
plain_run, dynamic_run = train_lora(real), train_lora(dynamic)
after = frozen_snapshot(dynamic)
out["dynamic_steps"] = dynamic_run["steps"]
out["trained_on_plain_patcher"] = not compat.is_dynamic(dynamic_run["host"].patcher)
out["same_lora"] = sorted(plain_run["lora"]) == sorted(dynamic_run["lora"]) and all(
    torch.equal(plain_run["lora"][k], dynamic_run["lora"][k]) for k in plain_run["lora"])
out["lora_changed"] = any(float(v.abs().sum()) > 0 for k, v in dynamic_run["lora"].items() if "lora_up" in k)
out["input_unchanged"] = (before[1:] == after[1:]  # requires_grad flags and patches as they were, and every weight
                          and all(torch.equal(before[0][k], after[0][k]) for k in before[0]))

# the merged-checkpoint path: LoRA patches baked into a resident delegate equal the plain patcher's bake
lora_patches = comfy.lora.load_lora(dynamic_run["lora"], comfy.lora.model_lora_keys_unet(real.model, {}))
saved, fresh = {}, sd15(comfy.model_patcher.ModelPatcher).model.state_dict()
with tempfile.TemporaryDirectory() as tmp:
    for name, base in (("plain", sd15(comfy.model_patcher.ModelPatcher)), ("dynamic", sd15(UpstreamDynamicPatcher))):
        merged = base.clone()
        merged.add_patches(lora_patches, 1.0)
        lora_tools.save_checkpoint_file(Path(tmp) / f"{name}.safetensors", merged, None, None, {"t": name})
        saved[name] = comfy.utils.load_torch_file(os.path.join(tmp, f"{name}.safetensors"))
        unpatched = all(torch.equal(v, fresh[k]) for k, v in base.model.state_dict().items())
out["checkpoint_input_unpatched"] = unpatched  # the dynamic input's own weights: the bake went to the delegate
out["checkpoint_keys"] = len(saved["dynamic"])
out["checkpoint_same"] = sorted(saved["plain"]) == sorted(saved["dynamic"]) and all(
    torch.equal(saved["plain"][k], saved["dynamic"][k]) for k in saved["plain"])
out["checkpoint_baked"] = any(not torch.equal(saved["dynamic"][k], v) for k, v in
                              sd15(comfy.model_patcher.ModelPatcher).model.state_dict_for_saving(None, None, None)
                              .items() if k in saved["dynamic"])


class UpstreamDynamicNoDelegate(UpstreamDynamicPatcher):
    """A dynamic patcher offering neither get_non_dynamic_delegate nor clone(disable_dynamic=...)."""

    get_non_dynamic_delegate = None


try:
    training.trainable_host(sd15(UpstreamDynamicNoDelegate), None, False)
    out["no_delegate_refused"] = ""
except RuntimeError as error:
    out["no_delegate_refused"] = str(error)

# 4b. A dynamic CLIP (the fixture checkpoint's CLIP-L, its patcher swapped for the dynamic double over the same
#     text-encoder model): text-encoder LoRA training makes a resident copy (trainable_host's host.clip), encodes and
#     trains there, and gives the LoRA the plain CLIP gives, te keys included; the input CLIP is kept as it was.
import comfy.sd  # noqa: E402

from atelier.nodes import cells, provenance  # noqa: E402
from atelier.nodes.lora_files import fit_lora  # noqa: E402
from atelier.nodes.train_adapter import autograd_friendly_clip, make_encoder  # noqa: E402
from atelier.core.provenance import BaseModel  # noqa: E402
from atelier.core.forward_lora import ForwardLoRA  # noqa: E402

_, plain_clip, _, _ = comfy.sd.load_checkpoint_guess_config(sys.argv[2], output_vae=False, output_clip=True)


def dynamic_clip(clip):
    """A clone of CLIP whose patcher is the dynamic double over the same text-encoder model."""
    out = clip.clone()
    out.patcher.__class__ = UpstreamDynamicPatcher
    return out


def train_te_lora(clip) -> dict:
    """Two LoRA steps with the text encoder training, wired as train_lora wires them (host.clip encodes)."""
    g = torch.Generator().manual_seed(1)
    samples = [TrainSample(latent=torch.randn(4, 8, 8, generator=g), caption=f"a photo of thing {i}") for i in range(2)]
    with torch.inference_mode(False):
        host = training.trainable_host(sd15(comfy.model_patcher.ModelPatcher), clip, True)
        network, _ = training.lora_network(host, NetworkConfig(rank=4, alpha=4.0), seed=0, continue_from="(none)")
        config = TrainConfig(max_steps=2, batch_size=2, unet_lr=1e-2, te_lr=1e-2, train_text_encoder=True,
                             save_every_epochs=0)
        trainer = Trainer(config, network, host.denoise, host.denoise.model_sampling, samples,
                          make_encoder(host.clip, pooled=host.denoise.needs_pooled))
        with autograd_friendly_clip(host.clip.cond_stage_model):
            state = trainer.run()
        network.remove()
    return {"steps": state.step, "lora": network.kohya_state_dict(torch.float32), "host": host}


def clip_snapshot(clip):
    """Every weight's bytes (hashed), the requires_grad flags and the patches of a CLIP."""
    h = __import__("hashlib").sha256()
    for k, v in clip.cond_stage_model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return (h.hexdigest(), [p.requires_grad for p in clip.cond_stage_model.parameters()], sorted(clip.patcher.patches),
            clip.patcher.model is clip.cond_stage_model)


dyn_clip = dynamic_clip(plain_clip)
out["dynamic_clip"] = compat.is_dynamic(dyn_clip.patcher) and dyn_clip.cond_stage_model is plain_clip.cond_stage_model
before = clip_snapshot(dyn_clip)
te_dynamic = train_te_lora(dyn_clip)  # first: the plain run below thaws and trains on the shared model in place
after = clip_snapshot(dyn_clip)
te_plain = train_te_lora(plain_clip)
resident = te_dynamic["host"].clip
out["te_resident_copy"] = (resident is not dyn_clip and not compat.is_dynamic(resident.patcher)
                           and resident.cond_stage_model is not dyn_clip.cond_stage_model
                           and te_plain["host"].clip is plain_clip)  # a plain CLIP is used as it is
out["te_steps"] = te_dynamic["steps"]
out["te_keys"] = sum(k.startswith("lora_te_") for k in te_dynamic["lora"])
out["te_same_lora"] = sorted(te_plain["lora"]) == sorted(te_dynamic["lora"]) and all(
    torch.equal(te_plain["lora"][k], te_dynamic["lora"][k]) for k in te_plain["lora"])
out["te_lora_changed"] = any(float(v.abs().sum()) > 0 for k, v in te_dynamic["lora"].items()
                             if k.startswith("lora_te_") and "lora_up" in k)
out["te_input_unchanged"] = [before[i] == after[i] for i in range(4)]  # weights, requires_grad, patches, model

# 4c. What reads weights without loading them, on the dynamic double and on the plain patcher: the run identity's
#     fingerprints (provenance) and the XY grid's forward-time LoRA hooks (cells.forward_layers + ForwardLoRA).
lora = te_plain["lora"]
patches = comfy.lora.load_lora(lora, comfy.lora.model_lora_keys_unet(real.model, {}))
fingerprints = {}
for name, model, clip in (("plain", sd15(comfy.model_patcher.ModelPatcher), plain_clip),
                          ("dynamic", sd15(UpstreamDynamicPatcher), dynamic_clip(plain_clip))):
    model.add_patches(patches, 0.5)
    base = BaseModel(model_class="BaseModel", fingerprint=provenance.unpatched_fingerprint(model))
    identity = provenance.base_identity(model, clip, None, base)  # the weights and patches a run identity hashes
    fingerprints[name] = [base.fingerprint, identity["model_patches"], identity["clip"], identity]
    fit = fit_lora(lora, "te", model, clip)
    resolved, problem = cells.forward_layers(fit, {"unet": model.model, "text": clip.cond_stage_model})
    unet_hooks, text_hooks = ForwardLoRA(), ForwardLoRA()
    slots = unet_hooks.add_slot("te"), text_hooks.add_slot("te")
    for part, module, down, up, alpha, key in resolved:
        (unet_hooks if part == "unet" else text_hooks).add(slots[part != "unet"], module, down, up, alpha, where=key)
    unet_hooks.set_strengths([[0.8]])
    text_hooks.set_strengths([[0.8]])
    g = torch.Generator().manual_seed(3)
    x, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 768, generator=g)
    tokens = clip.tokenize("a photo of thing 0")
    with torch.no_grad(), unet_hooks.attached(), text_hooks.attached():
        denoised = model.model.apply_model(x, torch.tensor([5.0]), c_crossattn=context)
        text, _ = clip.cond_stage_model.encode_token_weights(tokens)  # the modules themselves (the double cannot load)
    fingerprints[name] += [problem, sorted(k for *_, k in resolved), denoised, text]
plain_f, dynamic_f = fingerprints["plain"], fingerprints["dynamic"]
out["fingerprints_same"] = plain_f[:4] == dynamic_f[:4]
out["hooks_layers"] = len(plain_f[5]) if plain_f[4] is None else plain_f[4]
out["hooks_same_layers"] = plain_f[4:6] == dynamic_f[4:6]
out["hooks_same_output"] = torch.equal(plain_f[6], dynamic_f[6]) and torch.equal(plain_f[7], dynamic_f[7])

# 5. The `datasets` folder type: 0.3.64 has none, so Atelier adds models/datasets once (registering twice adds
#    nothing); with upstream's built-in type (a double: registered as upstream's folder_paths.py does) the host's
#    root is kept and no second default root appears.
out["registered_at_import"] = "datasets" in folder_paths.folder_names_and_paths
saved = folder_paths.folder_names_and_paths.pop("datasets", None)
host.register_folder_types()
host.register_folder_types()
out["ours_roots"] = [os.path.relpath(p, folder_paths.base_path) for p in folder_paths.get_folder_paths("datasets")]
upstream_root = os.path.join(folder_paths.base_path, "datasets")
folder_paths.folder_names_and_paths["datasets"] = ([upstream_root], set())
host.register_folder_types()
out["upstream_roots"] = [os.path.relpath(p, folder_paths.base_path) for p in folder_paths.get_folder_paths("datasets")]
out["upstream_dropdown_labels"] = [r.label for r in host.dataset_roots()].count("datasets")
folder_paths.folder_names_and_paths.pop("datasets")
if saved is not None:
    folder_paths.folder_names_and_paths["datasets"] = saved

print(json.dumps(out))
