"""Run inside ComfyUI's Python: exercises each path of nodes/compat.py on this host.

Where 0.3.64 cannot show upstream's behaviour, a test double replaces ONLY that behaviour (named `Upstream...` below):
a ModelPatcher that answers is_dynamic() True, a ProgressBar whose hook never runs (upstream throttles updates), and a
pre-registered `datasets` folder type as upstream's folder_paths.py registers it. Everything else is the real host.
Prints one JSON line. usage: python compat_check.py ATELIER_CHECKOUT   (cwd = the ComfyUI checkout)
"""

import inspect
import json
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.getcwd())
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import torch  # noqa: E402

import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.samplers  # noqa: E402
import folder_paths  # noqa: E402

sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import conftest  # noqa: E402,F401  registers the Atelier checkout as the package `atelier` (as the test suite does)
from atelier.nodes import compat, extension, host, training  # noqa: E402,F401  extension registers as ComfyUI loads it

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


# 4. Dynamic-VRAM patchers: 0.3.64's ModelPatcher is resident; a patcher answering is_dynamic() True is refused
#    with the fix, before anything is loaded.
class UpstreamDynamicPatcher(comfy.model_patcher.ModelPatcher):
    """Test double of upstream's ModelPatcherDynamic: only its is_dynamic() answer."""

    def is_dynamic(self):
        return True


real = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
dynamic = UpstreamDynamicPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
out["real_is_dynamic"] = compat.is_dynamic(real)
out["double_is_dynamic"] = compat.is_dynamic(dynamic) and compat.is_dynamic(dynamic.clone())
compat.require_resident("Training", real, None)
try:
    training.trainable_host(dynamic, None, False)
    out["dynamic_refused"] = ""
except RuntimeError as error:
    out["dynamic_refused"] = str(error)

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
