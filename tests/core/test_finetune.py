"""Full fine-tune on tiny real models: it learns, never touches the host's weights, resumes exactly, applies block
learning rates, and works with checkpointing, Adafactor, bf16 and fp16 loss scaling."""

import pytest
import torch

from tiny_models import TinyTextEncoder, TinyUNet

from atelier.trainers import objectives as ob
from atelier.trainers.checkpoint import load_state, save_state
from atelier.trainers.finetune import FullFineTune, parse_block_lrs
from atelier.trainers.loop import Callbacks, Trainer, TrainConfig, TrainSample
from atelier.trainers.memory import gradient_checkpointing


def make_samples(n=4, size=8):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, size, size, generator=g)
    return [TrainSample(latent=base.roll(i, dims=-1) * 0.5 + 0.1 * i, caption=f"korra, pose {i}") for i in range(n)]


class Rig:
    """A tiny UNet + text encoder, fine-tuned as the node wires ComfyUI's modules."""

    def __init__(self, te=False, block_lrs=""):
        self.unet, self.te = TinyUNet(), TinyTextEncoder()
        self.ms = ob.DiscreteEps()
        roots = {"unet": self.unet, **({"te": self.te} if te else {})}
        self.tune = FullFineTune(roots, parse_block_lrs(block_lrs))

    def denoise(self, x_t, sigma, cond, **extra):
        return self.unet(self.ms.calculate_input(sigma, x_t), self.ms.timestep(sigma), cond)

    def encode(self, captions):
        return self.te(captions), {}

    def trainer(self, callbacks=None, **cfg):
        config = TrainConfig(**{"unet_lr": 1e-3, "te_lr": 1e-3, "epochs": 1, "save_every_epochs": 0, **cfg})
        return Trainer(config, self.tune, self.denoise, self.ms, make_samples(6), self.encode, callbacks)


def host_weights(*modules):
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def same(a, b):
    return all(set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_it_trains_and_leaves_the_host_modules_untouched():
    rig = Rig(te=True)
    before = host_weights(rig.unet, rig.te)
    params_before = [p for p in rig.unet.parameters()]
    t = rig.trainer(max_steps=6, batch_size=2, train_text_encoder=True)
    t.run()
    assert same(host_weights(rig.unet, rig.te), before)  # the host's tensors never changed
    assert all(p is q for p, q in zip(rig.unet.parameters(), params_before))  # its own parameter objects are back
    out = rig.tune.export()
    changed = [k for k in out if not torch.equal(out[k], before[0 if k.startswith("unet.") else 1][k.split(".", 1)[1]])]
    assert any(k.startswith("unet.") for k in changed) and any(k.startswith("te.") for k in changed)
    with rig.tune.applied():  # the trained weights compute inside the block
        assert torch.equal(rig.unet.out[2].weight, rig.tune.by_key["unet.out.2.weight"])


def test_tiny_model_learns():
    rig = Rig()
    t = rig.trainer(max_steps=15, batch_size=6, unet_lr=1e-2)
    state = t.run()
    first, last = sum(state.losses[:3]) / 3, sum(state.losses[-3:]) / 3
    assert last < 0.8 * first, (first, last)


def test_block_lrs_scale_groups_and_zero_freezes():
    rig = Rig(block_lrs="input_blocks\\.1 = 0.5\n# comment\ntime_embed = 0")
    t = rig.trainer(max_steps=2, unet_lr=1e-3)
    lrs = {g["name"]: g["initial_lr"] for g in t.optimizer.param_groups}
    assert lrs == {"unet": pytest.approx(1e-3), "unet ×0.5": pytest.approx(5e-4)}
    frozen = {k: rig.tune.by_key[k].detach().clone() for k in rig.tune.keys if "time_embed" in k}
    t.run()
    assert frozen and all(torch.equal(rig.tune.by_key[k], v) for k, v in frozen.items())
    assert all(not rig.tune.by_key[k].requires_grad for k in frozen)
    assert "unet.time_embed.0.weight" not in rig.tune.trained_keys(False)


@pytest.mark.parametrize("line", ["input_blocks", "x = -1", "x = nan", "( = 1"])
def test_bad_block_lr_lines_are_refused(line):
    with pytest.raises(ValueError, match="block_lrs line 1"):
        parse_block_lrs(line)


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9, "optimizer": "adafactor"}])
def test_resume_equals_uninterrupted(tmp_path, extra):
    settings = dict(max_steps=5, batch_size=2, **extra)
    full = Rig()
    full.trainer(**settings).run()
    calls = {"n": 0}
    first = Rig()
    t1 = first.trainer(Callbacks(should_stop=lambda: calls.__setitem__("n", calls["n"] + 1) or calls["n"] > 2),
                       **settings)
    state = t1.run()
    assert state.step == 2
    save_state(tmp_path / "state", t1, state)
    second = Rig()
    t2 = second.trainer(**settings)
    t2.run(load_state(tmp_path / "state", t2))
    a, b = full.tune.export(torch.float32), second.tune.export(torch.float32)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_resume_state_of_another_model_is_refused():
    rig = Rig()
    with pytest.raises(ValueError, match="1 unexpected"):
        rig.tune.load_state_tensors({**rig.tune.state_tensors(), "unet.extra": torch.zeros(1)})


def test_export_keeps_the_host_dtype_and_installed_swaps_back():
    unet = TinyUNet().to(torch.bfloat16)
    tune = FullFineTune({"unet": unet})
    assert all(t.dtype == torch.bfloat16 for t in tune.export().values())
    assert tune.by_key["unet.out.2.weight"].dtype == torch.float32  # master weights
    zeros = {k: torch.zeros_like(v) for k, v in tune.export().items()}
    original = unet.out[2].weight
    with tune.installed(zeros):
        assert float(unet.out[2].weight.abs().sum()) == 0.0
    assert unet.out[2].weight is original


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_checkpointing_train(precision):
    rig = Rig()
    blocks = [rig.unet.input_blocks[1][0], rig.unet.out]
    t = rig.trainer(max_steps=3, batch_size=2, precision=precision)
    with gradient_checkpointing(blocks):
        state = t.run()
    assert state.step == 3 and all(torch.isfinite(torch.tensor(state.losses)))


def test_checkpointing_gives_the_same_weights():
    plain, checked = Rig(), Rig()
    plain.trainer(max_steps=3, batch_size=2).run()
    with gradient_checkpointing([checked.unet.input_blocks[1][0], checked.unet.out]):
        checked.trainer(max_steps=3, batch_size=2).run()
    a, b = plain.tune.export(), checked.tune.export()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_the_fused_adamw_step_gives_the_same_fine_tune():
    """What a CUDA run uses (torch's fused AdamW kernel, one launch per step, no per-parameter temporaries) trains the
    full fine-tune to the same weights as the foreach step; checked on CPU, where torch runs the fused kernel too."""
    from atelier.trainers.optim import make_optimizer

    results = []
    for fused in (False, True):
        rig = Rig()
        t = rig.trainer(max_steps=4)
        t.optimizer = make_optimizer("adamw", t.optimizer.param_groups, weight_decay=0.0, fused=fused)
        assert t.optimizer.defaults["fused"] is fused or (not fused and t.optimizer.defaults["fused"] is None)
        t.run()
        results.append({k: v.detach().clone() for k, v in rig.tune.export(torch.float32).items()})
    plain, fused = results
    assert plain.keys() == fused.keys()
    assert max((plain[k] - fused[k]).abs().max().item() for k in plain) < 1e-5
    assert any(not torch.equal(plain[k], Rig().tune.export(torch.float32)[k]) for k in plain)  # it trained
