"""The seams on their own: a second, test-only trainable and a test-only objective run through the same loop and
the same run (naming, step and epoch saves with keep-last, state folder, exact resume)."""

import contextlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import Rig, make_samples

from atelier.trainers import objectives as ob
from atelier.trainers.loop import Callbacks, Trainer, TrainConfig, TrainState
from atelier.trainers.run import (RunFiles, TrainingRun, epoch_file, finished_epoch, intermediate_kind,
                                  is_run_file_name, prune_epoch_files, step_file)


class OutputBias(torch.nn.Module):
    """A test-only trainable: a learned per-channel bias added to the tiny UNet's output (a full fine-tune of one
    new tensor, in miniature). It implements the Trainable protocol and nothing else."""

    def __init__(self, unet, channels=4):
        super().__init__()
        self.unet = [unet]  # not a child module: the host model is not part of the trainable
        self.bias = torch.nn.Parameter(torch.zeros(channels))

    @contextlib.contextmanager
    def applied(self):
        unet = self.unet[0]
        handle = unet.register_forward_hook(lambda m, args, out: out + self.bias[None, :, None, None])
        try:
            yield self
        finally:
            handle.remove()

    def param_groups(self, unet_lr, te_lr, train_text_encoder):
        return [{"params": [self.bias], "lr": unet_lr, "name": "bias"}]

    def state_tensors(self):
        return {"bias": self.bias.detach().float().clone()}

    def load_state_tensors(self, tensors):
        if set(tensors) != {"bias"} or tensors["bias"].shape != self.bias.shape:
            raise ValueError(f"expected one 'bias' of shape {tuple(self.bias.shape)}, got {sorted(tensors)}")
        with torch.no_grad():
            self.bias.copy_(tensors["bias"])

    def export(self, dtype):
        return {"output_bias": self.bias.detach().to(dtype).clone()}


def bias_run(tmp_path, config, name="bias", keep_last=0, callbacks=None):
    rig = Rig()
    trainable = OutputBias(rig.unet)
    trainer = Trainer(config, trainable, rig.denoise, rig.ms, make_samples(), rig.encode, callbacks or Callbacks())
    files = RunFiles(tmp_path / "out" / f"{name}.safetensors", tmp_path / "state" / name, keep_last)
    (tmp_path / "out").mkdir(exist_ok=True)
    return TrainingRun(trainer, files, lambda step, epoch: {"step": str(step), "epoch": str(epoch)}), trainable


def test_a_second_trainable_trains_saves_and_resumes_exactly_through_the_same_run(tmp_path):
    config = TrainConfig(unet_lr=5e-2, epochs=3, batch_size=2, save_every_epochs=1, save_every_steps=3, seed=4)
    run, trainable = bias_run(tmp_path, config)
    result = run.train()
    assert result.state.step == 6 and not result.stopped and trainable.bias.abs().sum() > 0  # it learned something
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["bias-000001.safetensors", "bias-000002.safetensors", "bias-step00000003.safetensors",
                     "bias.safetensors"]  # step 6 is the final file; epoch 3 is the final file
    final = load_file(str(tmp_path / "out" / "bias.safetensors"))
    assert torch.equal(final["output_bias"], trainable.bias.detach().half())  # the trainable's own export format
    assert (tmp_path / "state" / "bias" / "state.json").is_file()

    stop_at = {"n": 0}
    half, _ = bias_run(tmp_path, config, "half", callbacks=Callbacks(
        should_stop=lambda: stop_at.__setitem__("n", stop_at["n"] + 1) or stop_at["n"] > 4))
    stopped = half.train()
    assert stopped.stopped and stopped.state.step == 4
    resumed, again = bias_run(tmp_path, config, "half")
    assert resumed.train(tmp_path / "state" / "half").state.step == 6
    assert torch.equal(again.bias, trainable.bias)  # resumed equals uninterrupted, bit for bit


def test_step_saves_never_overwrite_each_other_or_an_epoch_save(tmp_path):
    config = TrainConfig(unet_lr=1e-2, epochs=2, batch_size=1, save_every_steps=1, save_every_epochs=1)
    run, _ = bias_run(tmp_path, config)
    run.train()
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert [n for n in names if "-step" in n] == [f"bias-step{s:08d}.safetensors" for s in range(1, 8)]
    assert "bias-000001.safetensors" in names and len(names) == 7 + 1 + 1
    metas = {n: load_file(str(tmp_path / "out" / n)) for n in names}
    assert len({float(t["output_bias"].float().sum()) for t in metas.values()}) > 2  # distinct weights, no overwrite


def test_keep_last_prunes_each_kind_separately_and_only_this_runs_files(tmp_path):
    config = TrainConfig(unet_lr=1e-2, epochs=3, batch_size=1, save_every_steps=2, save_every_epochs=1)
    (tmp_path / "out").mkdir()
    for other in ("bias2-000001.safetensors", "bias-step1.safetensors", "bias-000001.safetensors.txt"):
        (tmp_path / "out" / other).write_bytes(b"keep")
    run, _ = bias_run(tmp_path, config, keep_last=1)
    run.train()
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(["bias-000002.safetensors", "bias-step00000010.safetensors", "bias.safetensors",
                            "bias2-000001.safetensors", "bias-step1.safetensors", "bias-000001.safetensors.txt"])


def test_run_file_names_are_compared_exactly():
    final = Path("/x/run.safetensors")
    assert epoch_file(final, 2).name == "run-000002.safetensors"
    assert step_file(final, 100).name == "run-step00000100.safetensors"
    assert intermediate_kind("run-000002.safetensors", final) == "epoch"
    assert intermediate_kind("run-step00000100.safetensors", final) == "step"
    for other in ("run-00002.safetensors", "run-step100.safetensors", "run-０００００２.safetensors",
                  "runx-000002.safetensors", "run-000002.ckpt"):
        assert intermediate_kind(other, final) is None and not is_run_file_name(other, final)
    prune_epoch_files(final, 0)  # keep_last 0 keeps everything and touches no folder


def test_finished_epoch_counts_a_partial_epoch():
    assert finished_epoch(TrainState(step=4, epoch=2, batch_in_epoch=0)) == 2
    assert finished_epoch(TrainState(step=5, epoch=2, batch_in_epoch=1)) == 3


def test_an_objective_is_a_unit_the_loop_does_not_know():
    """A test-only objective (distance of the raw output to zero, per sample) replaces the standard one: the loop
    trains whatever per-sample loss it returns."""
    seen = []

    def shrink_output(denoise, ms, batch):
        out = denoise(batch.x_t, batch.sigma, batch.cond, **batch.extra)
        seen.append(tuple(batch.x0.shape))
        return out.pow(2).mean(dim=(1, 2, 3))

    rig = Rig()
    trainer = Trainer(TrainConfig(unet_lr=5e-2, max_steps=8, batch_size=2, save_every_epochs=0), rig.network,
                      rig.denoise, rig.ms, make_samples(), rig.encode, objective=shrink_output)
    state = trainer.run()
    assert seen and all(shape[0] == 2 for shape in seen)
    assert state.losses[-1] < 0.5 * state.losses[0]  # it minimised the custom objective


def test_standard_objective_applies_min_snr_by_the_formula():
    ms = ob.DiscreteEps()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    sigma = torch.tensor([0.2, 2.0, 10.0])
    batch = ob.NoisedBatch(x0, noise, sigma, ms.noise_scaling(sigma, noise, x0), torch.zeros(3, 2, 8))

    def wrong(x_t, s, cond):
        return torch.zeros_like(x_t)

    plain = ob.DenoisingLoss()(wrong, ms, batch)
    weighted = ob.DenoisingLoss(min_snr_gamma=5.0)(wrong, ms, batch)
    snr = ob.snr(ms, sigma)
    assert torch.allclose(weighted / plain, torch.clamp(snr, max=5.0) / snr, rtol=1e-5)  # ε-prediction form
    with pytest.raises(ValueError, match="Unknown loss 'l3'"):
        ob.DenoisingLoss(loss="l3")
