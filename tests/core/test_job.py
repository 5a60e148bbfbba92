"""Training jobs: export pieces → job folder → the runner trains it without ComfyUI; torchrun with 2 ranks equals
one process with the doubled batch."""

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from job_worker import tiny_encode, tiny_job_model
from safetensors.torch import load_file
from test_trainer import group_padded_encode, long_caption_samples, make_samples

from atelier.core.lora_io import load_lora
from atelier.trainers.distributed import Distributed
from atelier.trainers.job import JOB_FILE, TerminalProgress, frozen_encoder, read_job, run_job, write_job
from atelier.trainers.loop import TrainConfig, TrainSample
from atelier.trainers.network import NetworkConfig

TESTS = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # max abs difference of fp32 LoRA weights: only the order of the gradient sums differs


def export(folder: Path, samples=None, memory=None, **cfg) -> Path:
    config = TrainConfig(**{"unet_lr": 1e-2, "epochs": 2, "batch_size": 4, "save_every_epochs": 0, **cfg})
    return write_job(folder, name="tiny", config=config, network=NetworkConfig(rank=4, alpha=4.0),
                     base={"name": "tiny.safetensors", "sha256": "ab" * 32}, metadata={"ss_output_name": "tiny"},
                     samples=samples or make_samples(6), encode=tiny_encode, **(memory or {}))


def state_weights(out: Path) -> dict:
    return load_file(str(out / "state" / "tiny" / "lora.safetensors"))


def test_job_round_trip_keeps_every_sample(tmp_path):
    samples = make_samples(3)
    samples[1] = TrainSample(samples[1].latent, "flip me", 0.5, 2, True, samples[1].latent * 2, True,
                             torch.ones(1, 8, 8) * 0.25, 7)
    job = read_job(export(tmp_path / "job", samples))
    assert [s.caption for s in job.samples] == [s.caption for s in samples]
    got = job.samples[1]
    assert (got.loss_weight, got.repeats, got.random_flip, got.regularization, got.key) == (0.5, 2, True, True, 7)
    assert torch.equal(got.flipped_latent, samples[1].latent * 2) and torch.equal(got.mask, torch.ones(1, 8, 8) * .25)
    assert job.samples[0].flipped_latent is None and job.samples[0].mask is None
    assert torch.allclose(job.text["flip me"][0], tiny_encode(["flip me"])[0].detach(), atol=1e-6)  # frozen
    assert job.base["sha256"] == "ab" * 32 and "/" not in job.base["name"]


def test_runner_trains_a_job_and_logs_steps(tmp_path):
    folder = export(tmp_path / "job")
    lines = []
    progress = TerminalProgress(tmp_path / "steps.jsonl", type("S", (), {"write": lines.append,
                                                                         "flush": lambda self: None})())
    result = run_job(folder, tiny_job_model(), on_step=progress)
    tensors, meta = load_lora(folder / "tiny.safetensors")
    assert result.state.step == 4 and meta["ss_steps"] == "4" and meta["ss_output_name"] == "tiny"
    assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in tensors)
    events = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    assert set(events[0]) >= {"step", "loss", "smoothed", "lr", "epoch", "samples_per_second"}
    assert lines[-1] == "\n" and "step 4/4" in lines[-2] and lines[0].startswith("\r[")


def test_resumed_job_equals_uninterrupted(tmp_path):
    whole = export(tmp_path / "whole")
    run_job(whole, tiny_job_model())
    half = export(tmp_path / "half", max_steps=2)
    run_job(half, tiny_job_model())
    data = json.loads((half / JOB_FILE).read_text())
    data["config"]["max_steps"] = 0  # a resumable change: the job runs on to its epochs
    (half / JOB_FILE).write_text(json.dumps(data))
    run_job(half, tiny_job_model(), resume=True)
    a, b = state_weights(whole), state_weights(half)
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0


def test_job_without_embeddings_needs_the_text_encoder(tmp_path):
    folder = export(tmp_path / "job", caption_shuffle=True)
    assert read_job(folder).text is None
    with pytest.raises(ValueError, match="needs the model's text encoder"):
        run_job(folder, tiny_job_model())


def test_frozen_embeddings_of_different_token_lengths_train(tmp_path):
    """Captions frozen in two groups (6 and 12 tokens) are tiled to one length when a batch mixes them."""
    config = TrainConfig(unet_lr=1e-2, epochs=1, batch_size=9, save_every_epochs=0)
    folder = write_job(tmp_path / "job", name="tiny", config=config, network=NetworkConfig(rank=4, alpha=4.0),
                       base={"name": "tiny.safetensors"}, metadata={}, samples=long_caption_samples(),
                       encode=group_padded_encode)
    job = read_job(folder)
    assert {c.shape[1] for c, _ in job.text.values()} == {6, 12}
    cond, _ = frozen_encoder(job.text, "job")([job.samples[0].caption, job.samples[-1].caption])
    assert cond.shape == (2, 12, 8)  # the 6-token embedding repeated twice, as ComfyUI batches prompts
    assert run_job(folder, tiny_job_model()).state.step == 2


def torchrun(job: Path, out: Path, nproc: int, *extra: str, ok: bool = True) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone",
           str(TESTS / "job_worker.py"), str(job), str(out), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done.stderr


def test_one_ranks_nan_loss_stops_every_rank(tmp_path):
    """Rank 1 diverges; rank 0 learns it from the gradient sum and raises too, instead of waiting in all_reduce."""
    stderr = torchrun(export(tmp_path / "job"), tmp_path / "out", 2, "--nan-on-rank=1", ok=False)
    assert "TrainingDiverged: Loss became nan at step 1" in stderr, stderr[-3000:]
    assert "TrainingDiverged: Loss became non-finite on another rank at step 1" in stderr, stderr[-3000:]


def test_two_ranks_equal_one_process_with_the_doubled_batch(tmp_path):
    """2 ranks × 2 samples each == 1 process × batch 4 (the job's batch_size is the global batch)."""
    folder = export(tmp_path / "job", batch_size=4, grad_accum=2, epochs=3)
    torch.set_num_threads(1)
    run_job(folder, tiny_job_model(), out=tmp_path / "one")
    torchrun(folder, tmp_path / "two", 2)
    one, two = state_weights(tmp_path / "one"), state_weights(tmp_path / "two")
    assert set(one) == set(two)
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    assert diff < TOLERANCE, f"2 ranks differ from one process by {diff}"
    a, meta_a = load_lora(tmp_path / "one" / "tiny.safetensors")
    b, meta_b = load_lora(tmp_path / "two" / "tiny.safetensors")
    assert set(a) == set(b) and all(a[k].dtype == b[k].dtype for k in a)
    assert meta_a["ss_steps"] == meta_b["ss_steps"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["state", "tiny.safetensors"]  # rank 0 only
    assert [p.name for p in (tmp_path / "two" / "state").iterdir()] == ["tiny"]


def test_resume_across_a_change_of_world_size(tmp_path):
    """Half the run on 2 ranks, the rest in one process: equals one process throughout."""
    whole = export(tmp_path / "whole")
    run_job(whole, tiny_job_model(), out=tmp_path / "one")
    half = export(tmp_path / "half", max_steps=2)
    torchrun(half, tmp_path / "mixed", 2)
    data = json.loads((half / JOB_FILE).read_text())
    data["config"]["max_steps"] = 0
    (half / JOB_FILE).write_text(json.dumps(data))
    run_job(half, tiny_job_model(), out=tmp_path / "mixed", resume=True)
    a, b = state_weights(tmp_path / "one"), state_weights(tmp_path / "mixed")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOLERANCE


def test_sum_gradients_keeps_none_where_no_rank_has_a_gradient(tmp_path):
    """In a 1-process gloo group: a gradient-less parameter stays None (AdamW skips it), a flagged loss reads back."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
        used.grad = torch.full((3,), 2.0)
        assert Distributed(0, 1).sum_gradients([used, unused], 1.5) == (1.5, True)
        assert unused.grad is None and torch.equal(used.grad, torch.full((3,), 2.0))
        assert Distributed(0, 1).sum_gradients([used, unused], 0.0, finite=False)[1] is False
    finally:
        dist.destroy_process_group()


def test_non_finite_latents_or_embeddings_are_not_written(tmp_path):
    samples = make_samples(3)
    samples[2] = TrainSample(samples[2].latent * float("nan"), samples[2].caption)
    with pytest.raises(ValueError, match="The latent of sample 2 holds NaN or inf values, so the job was not written"):
        export(tmp_path / "job", samples)
    assert not (tmp_path / "job").exists()
    config = TrainConfig(unet_lr=1e-2, epochs=1, save_every_epochs=0)
    with pytest.raises(ValueError, match="The cond of caption 0 holds NaN or inf values"):
        write_job(tmp_path / "job", name="tiny", config=config, network=NetworkConfig(), base={}, metadata={},
                  samples=make_samples(2), encode=lambda c: (tiny_encode(c)[0] / 0.0, {}))
    assert not (tmp_path / "job").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("samples"), "job.json is missing 'samples'; export the job again"),
    (lambda d: d["network"].update(rank_typo=4), "job.json's network has unknown 'rank_typo'; export the job again"),
    (lambda d: d["samples"][1].pop("repeats"), "job.json's sample 1 is missing 'repeats'; export the job again"),
])
def test_malformed_job_json_is_refused_by_name(tmp_path, edit, message):
    folder = export(tmp_path / "job", make_samples(2))
    data = json.loads((folder / JOB_FILE).read_text())
    edit(data)
    (folder / JOB_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_job(folder)


def test_resume_without_a_state_is_refused(tmp_path):
    folder = export(tmp_path / "job", make_samples(2))
    with pytest.raises(ValueError, match="Nothing to resume: 'state/tiny' in 'job' has no state.json"):
        run_job(folder, tiny_job_model(), resume=True)


def test_a_re_export_is_checked_as_a_set_and_its_old_state_is_not_resumed(tmp_path):
    folder = export(tmp_path / "job", make_samples(4), max_steps=1)
    run_job(folder, tiny_job_model())
    old_json = (folder / JOB_FILE).read_bytes()
    export(folder, make_samples(4, seed=1), max_steps=2)  # other data under the same name
    with pytest.raises(ValueError, match="'state/tiny' was trained on other data than this job folder holds now"):
        run_job(folder, tiny_job_model(), resume=True)
    (folder / JOB_FILE).write_bytes(old_json)  # a re-export cut short: new latents beside the old job.json
    with pytest.raises(ValueError, match="job/latents.safetensors does not match the digest in job.json"):
        read_job(folder)


def test_memory_settings_round_trip_and_an_old_job_runs_with_them_off(tmp_path):
    job = read_job(export(tmp_path / "on", make_samples(2), {"gradient_checkpointing": True, "blocks_to_swap": 3}))
    assert (job.gradient_checkpointing, job.blocks_to_swap) == (True, 3)
    folder = export(tmp_path / "old", make_samples(2))
    data = json.loads((folder / JOB_FILE).read_text())
    assert data["memory"] == {"gradient_checkpointing": False, "blocks_to_swap": 0}
    del data["memory"]  # a job exported before the memory settings existed
    (folder / JOB_FILE).write_text(json.dumps(data))
    job = read_job(folder)
    assert (job.gradient_checkpointing, job.blocks_to_swap) == (False, 0)


@pytest.mark.parametrize("memory, message", [
    ({"blocks_to_swap": 201}, "job/job.json's memory's blocks_to_swap is 201; expected a whole number from 0 to 200"),
    ({"blocks_to_swap": -1}, "blocks_to_swap is -1; expected a whole number from 0 to 200 \\(0 turns block swap off"),
    ({"blocks_to_swap": 2.5}, "blocks_to_swap is 2.5; expected a whole number"),
    ({"blocks_to_swap": "3"}, "blocks_to_swap is '3'; expected a whole number"),
    ({"blocks_to_swap": True}, "blocks_to_swap is True; expected a whole number"),
    ({"gradient_checkpointing": "yes"}, "memory's gradient_checkpointing is 'yes'; expected true or false"),
    ({"block_swap": 2}, "job/job.json's memory has unknown 'block_swap'; expected only gradient_checkpointing, "
                        "blocks_to_swap"),
    (4, "job/job.json's memory is 4; expected an object such as"),
])
def test_hand_edited_memory_settings_are_refused_by_name(tmp_path, memory, message):
    folder = export(tmp_path / "job", make_samples(2))
    data = json.loads((folder / JOB_FILE).read_text())
    data["memory"] = memory
    (folder / JOB_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_job(folder)


def test_export_refuses_a_bad_blocks_to_swap_before_writing(tmp_path):
    with pytest.raises(ValueError, match="blocks_to_swap is 201; expected a whole number from 0 to 200"):
        export(tmp_path / "job", make_samples(2), {"blocks_to_swap": 201})
    assert not (tmp_path / "job").exists()


def test_runner_trains_inside_the_callers_memory_contexts_with_the_same_result(tmp_path):
    from atelier.trainers.memory import block_swap, gradient_checkpointing

    plain, saver = export(tmp_path / "plain", max_steps=2), export(tmp_path / "saver", max_steps=2)
    run_job(plain, tiny_job_model())
    model, loads = tiny_job_model(), []
    unet = model.roots["lora_unet"]

    @contextmanager
    def swapped():
        with block_swap([unet.input_blocks[1][0]], "cpu", "cpu", measure=unet) as swap:
            yield
        loads.append(swap.loads)  # how often the swapped block was brought in: forward and recomputation

    run_job(saver, model, contexts=[swapped(), gradient_checkpointing([unet.out])])
    a, b = state_weights(plain), state_weights(saver)
    assert loads and loads[0] >= 4  # 2 steps, each a forward and a recomputed forward in backward
    assert max((a[k] - b[k]).abs().max().item() for k in a) < TOLERANCE
