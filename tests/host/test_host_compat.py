"""nodes/compat.py on the real 0.3.64 host: each version-dependent path, run in the host's Python.

Upstream behaviours 0.3.64 cannot show (dynamic-VRAM patchers, throttled progress, a built-in `datasets` type) are
test doubles of ONLY that behaviour, defined and named in tests/host/compat_check.py.
"""

import pytest
from comfy_host import FIXTURE_CHECKPOINT_NAME, ComfyError, combo_refusal
from test_host_objectives import host_script

# Samplers whose old source-text answer was wrong on 0.3.64: the default-noise call sits in a helper the wrapper
# calls (res_multistep, generic_step_sampler, sample_sa_solver), so the text search said 'single'. The probe is
# right: 'fixed' ones give the same result for any seed; 'per_sample' ones are reproduced exactly by the default
# noise sampler. The old answer was only slower (batches of one), never a wrong image.
SOURCE_TEXT_WRONG = {"ddpm": "per_sample", "res_multistep": "fixed", "res_multistep_cfg_pp": "fixed",
                     "res_multistep_ancestral": "per_sample", "res_multistep_ancestral_cfg_pp": "per_sample",
                     "sa_solver_pece": "per_sample"}


@pytest.fixture(scope="module")
def checked(comfy_server):
    checkpoint = comfy_server.models / "checkpoints" / FIXTURE_CHECKPOINT_NAME  # its CLIP-L trains in 4b
    return host_script(comfy_server, "compat_check.py", 600, str(checkpoint))


def test_every_sampler_is_probed_and_agrees_with_the_source_text_except_the_listed_ones(checked):
    samplers = checked["samplers"]
    assert len(samplers) >= 40 and set(SOURCE_TEXT_WRONG) <= set(samplers)
    disagree = {n: v["probe"] for n, v in samplers.items() if v["probe"] != v["source_text"]}
    assert disagree == SOURCE_TEXT_WRONG
    modes = {n: v["probe"] for n, v in samplers.items()}
    assert modes["euler"] == "fixed" and modes["euler_ancestral"] == "per_sample"
    assert modes["dpmpp_sde"] == "single" and modes["dpmpp_2m_sde"] == "single"  # Brownian tree over the batch
    assert checked["probe_cached"]


def test_v3_api_comes_from_the_versioned_module_with_the_same_objects(checked):
    assert checked["io_is_latest"]


def test_cancel_is_read_from_the_flag_even_when_progress_updates_are_throttled(checked):
    assert checked["cancel_seen"] and checked["flag_kept"]  # reading it leaves it set for ComfyUI's own checks
    assert checked["is_interrupt"] and not checked["is_interrupt_other"]
    assert checked["throttled_cancel_stops"]  # double: upstream's throttled bar never raises
    assert checked["real_bar_cancel_stops"] and checked["no_cancel_no_stop"]


def test_dynamic_vram_patchers_train_on_upstreams_resident_delegate(checked):
    assert checked["real_is_dynamic"] is False and checked["double_is_dynamic"]
    assert "full_load" in checked["double_refuses_full_load"]  # double: the old direct full load would fail upstream
    assert checked["dynamic_steps"] == 3 and checked["trained_on_plain_patcher"] and checked["lora_changed"]
    assert checked["same_lora"]  # the same LoRA, tensor for tensor, as on 0.3.64's plain patcher
    assert checked["input_unchanged"]  # the dynamic MODEL input: weights, grads and patches as they were


def test_a_merged_checkpoint_from_a_dynamic_patcher_equals_the_plain_one(checked):
    assert checked["checkpoint_keys"] > 100 and checked["checkpoint_baked"]  # the LoRA is in the weights
    assert checked["checkpoint_same"] and checked["checkpoint_input_unpatched"]


def test_a_dynamic_patcher_without_a_resident_copy_is_refused_with_the_fix(checked):
    assert checked["no_delegate_refused"].startswith("Training needs the model's weights loaded")
    assert "--disable-dynamic-vram" in checked["no_delegate_refused"]


def test_text_encoder_lora_on_a_dynamic_clip_trains_on_a_resident_copy(checked):
    assert checked["dynamic_clip"]  # double: the fixture's CLIP-L model under a dynamic patcher
    assert checked["te_resident_copy"]  # host.clip: a plain patcher over its own model; a plain CLIP used as it is
    assert checked["te_steps"] == 2 and checked["te_keys"] > 0 and checked["te_lora_changed"]
    assert checked["te_same_lora"]  # tensor for tensor (te and unet keys) what the plain CLIP trains
    assert checked["te_input_unchanged"] == [True] * 4  # the dynamic CLIP input: weights, requires_grad, patches, model


def test_fingerprints_and_forward_lora_hooks_agree_on_a_dynamic_patcher(checked):
    assert checked["fingerprints_same"]  # run identity: unpatched weights, patches, the CLIP's weights and patches
    assert isinstance(checked["hooks_layers"], int) and checked["hooks_layers"] > 0, checked["hooks_layers"]
    assert checked["hooks_same_layers"] and checked["hooks_same_output"]  # XY grid's forward-time LoRA


def test_datasets_folder_type_is_never_registered_twice(checked):
    assert checked["registered_at_import"]
    assert checked["ours_roots"] == ["models/datasets"]  # 0.3.64: Atelier's default root, once
    assert checked["upstream_roots"] == ["datasets"]  # upstream's built-in root kept, no second default root
    assert checked["upstream_dropdown_labels"] == 1


class UpstreamQueueTimeCheck:
    """Test double of upstream's queue-time check of V3 combo values (execution.py validate_inputs): POST /prompt
    answers HTTP 400 with a value_not_in_list node error, shaped as upstream sends it. Nothing else is doubled."""

    def queue(self, prompt):
        raise ComfyError(400, {"error": {"type": "prompt_outputs_failed_validation"}, "node_errors": {"1": {
            "errors": [{"type": "value_not_in_list", "message": "Value not in list",
                        "details": "folder: '/etc' not in ['input', 'datasets']",
                        "extra_info": {"input_name": "folder", "input_config": None, "received_value": "/etc"}}],
            "dependent_outputs": ["2"], "class_type": "AtelierLoadDataset"}}})


def test_a_queue_time_combo_refusal_is_read_as_a_refusal():
    where, kind, text = combo_refusal(UpstreamQueueTimeCheck(), {}, "1", "folder")
    assert (where, kind) == ("queue", "value_not_in_list") and "'/etc'" in text


def test_a_queue_time_refusal_of_another_input_is_not_taken_for_this_one():
    with pytest.raises(AssertionError, match="without an error for 'sub_path'"):
        combo_refusal(UpstreamQueueTimeCheck(), {}, "1", "sub_path")
