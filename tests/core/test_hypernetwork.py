"""A1111-format hypernetwork on the tiny UNet: the file both readers load, no-op start, exact strength 0, learning."""

import itertools

import pytest
import torch

from tiny_models import TinyTextEncoder, TinyUNet

from atelier.core.paths import Root
from atelier.trainers import objectives as ob
from atelier.trainers.checkpoint import load_state, save_state
from atelier.trainers.hypernetwork import (ACTIVATIONS, FORMAT_KEYS, Hypernetwork, HypernetworkConfig,
                                           parse_layer_structure, read_hypernetwork, save_hypernetwork)
from atelier.trainers.loop import Callbacks, Trainer, TrainConfig, TrainSample
from atelier.trainers.run import RunFiles, TrainingRun

CONTEXT = 8  # TinyUNet's context_dim; its attention width (16) is not a context width


def samples(n=4):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 8, 8, generator=g)
    return [TrainSample(latent=base.roll(i, dims=-1) * 0.5 + 0.1 * i, caption=f"korra, pose {i}") for i in range(n)]


class Rig:
    def __init__(self, **config):
        self.unet, self.te, self.ms = TinyUNet(), TinyTextEncoder(), ob.DiscreteEps()
        self.network = Hypernetwork(self.unet, HypernetworkConfig(**config), seed=0)

    def denoise(self, x_t, sigma, cond, **extra):
        return self.unet(self.ms.calculate_input(sigma, x_t), self.ms.timestep(sigma), cond)

    def trainer(self, callbacks=None, **cfg):
        config = TrainConfig(**{"unet_lr": 1e-2, "epochs": 1, "save_every_epochs": 0, "batch_size": 4, **cfg})
        return Trainer(config, self.network, self.denoise, self.ms, samples(), lambda c: (self.te(c), {}), callbacks)


def a1111_layout(sd: dict) -> list[str]:
    """The Sequential kinds A1111 builds from the file's fields (its HypernetworkModule rules, read from its code)."""
    ls, kinds = sd["layer_structure"], []
    for i in range(len(ls) - 1):
        kinds.append("Linear")
        if sd["activation_func"] != "linear" and (i < len(ls) - 2 or sd["activate_output"]):
            kinds.append("act")
        if sd["is_layer_norm"]:
            kinds.append("LayerNorm")
        if sd["dropout_structure"][i + 1] > 0:
            kinds.append("Dropout")
    return kinds


def comfy_layout(state: dict, sd: dict) -> list[str]:
    """The kinds ComfyUI 0.3.64's load_hypernetwork_patch builds: it walks the '.weight' keys in order and counts a
    LayerNorm as a layer when deciding what is "last" and "penultimate"."""
    names, kinds, i = [k[:-len(".weight")] for k in state if k.endswith(".weight")], [], 0
    while i < len(names):
        last, penultimate = i == len(names) - 1, i == len(names) - 2
        kinds.append("Linear")
        if sd["activation_func"] != "linear" and (not last or sd["activate_output"]):
            kinds.append("act")
        if sd["is_layer_norm"]:
            i += 1
            kinds.append("LayerNorm")
        if sd["use_dropout"] and not last and (not penultimate or sd["last_layer_dropout"]):
            kinds.append("Dropout")
        i += 1
    return kinds


def kinds_of(mlp) -> list[str]:
    names = {"Linear": "Linear", "LayerNorm": "LayerNorm", "SeededDropout": "Dropout"}
    return [names.get(type(m).__name__, "act") for m in mlp.linear]


def test_export_has_every_key_both_readers_use_in_weights_only_types(tmp_path):
    rig = Rig()
    sd = rig.network.export()
    assert set(sd) == {CONTEXT, *FORMAT_KEYS}
    k_state, v_state = sd[CONTEXT]
    assert list(k_state) == ["linear.0.weight", "linear.0.bias", "linear.1.weight", "linear.1.bias"]
    assert k_state["linear.0.weight"].shape == (16, 8) and v_state["linear.1.weight"].shape == (8, 16)
    assert sd["layer_structure"] == [1.0, 2.0, 1.0] and sd["activate_output"] is False  # A1111 defaults it to True
    save_hypernetwork(tmp_path / "h.pt", sd, {"name": "h", "step": 3})
    back = torch.load(tmp_path / "h.pt", weights_only=True)  # what HypernetworkLoader's safe_load does
    assert back["name"] == "h" and back["step"] == 3 and back["dropout_structure"] == [0.0, 0.0, 0.0]
    assert all(torch.equal(back[CONTEXT][i][k], sd[CONTEXT][i][k]) for i in (0, 1) for k in k_state)
    assert [p.name for p in tmp_path.iterdir()] == ["h.pt"]  # written through a temp file, nothing left over


@pytest.mark.parametrize("act,layer_norm,dropout,last_dropout,structure", list(itertools.product(
    ["linear", "relu", "sigmoid"], [False, True], [False, True], [False, True], [(1, 2, 1), (1, 1.5, 2, 1), (1, 1)])))
def test_layout_is_what_a1111_and_comfyui_both_build(act, layer_norm, dropout, last_dropout, structure):
    config = HypernetworkConfig(layer_structure=structure, activation_func=act, is_layer_norm=layer_norm,
                                use_dropout=dropout, last_layer_dropout=last_dropout)
    net = Hypernetwork(TinyUNet(), config)
    sd = net.export()
    for mlp, state in zip(net.pairs[str(CONTEXT)], sd[CONTEXT]):
        assert kinds_of(mlp) == a1111_layout(sd) == comfy_layout(state, sd)
        # A1111 loads strictly: the indices of the parametrised layers are those of its Sequential
        wanted = {f"linear.{i}.{p}" for i, kind in enumerate(a1111_layout(sd)) if kind in ("Linear", "LayerNorm")
                  for p in ("weight", "bias")}
        assert set(state) == wanted


def test_untrained_is_the_base_and_strength_zero_is_the_base_bit_for_bit():
    for config in ({}, {"is_layer_norm": True, "activation_func": "relu"}, {"weight_initialization": "XavierUniform"}):
        rig = Rig(**config)
        x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0]), torch.randn(2, 6, CONTEXT)
        base = rig.unet(x, t, c)
        with rig.network.applied():
            assert torch.equal(rig.unet(x, t, c), base)  # the last parametrised layer starts at zero
        rig.trainer(max_steps=4).run()
        rig.network.eval()
        with torch.no_grad(), rig.network.applied():
            assert not torch.allclose(rig.unet(x, t, c), base), config
            rig.network.set_multiplier(0.0)
            assert torch.equal(rig.unet(x, t, c), base)
        assert torch.equal(rig.unet(x, t, c), base)  # hooks removed after the block


def eval_loss(trainer, network):
    """Loss on fixed draws (epochs not used in training), hypernetwork applied, no dropout, no gradient."""
    network.eval()
    with torch.no_grad(), network.applied():
        loss = sum(trainer.micro_batch_loss([(i, i) for i in range(4)], e, 4).item() for e in range(50, 56)) / 6
    network.train()
    return loss


def test_tiny_training_reduces_the_loss():
    # The tiny UNet's noise prediction depends little on its cross-attention, so the gain is small but certain.
    rig = Rig()
    trainer = rig.trainer(max_steps=100, unet_lr=3e-2)
    before = eval_loss(trainer, rig.network)
    trainer.run()
    assert eval_loss(trainer, rig.network) < 0.995 * before


def test_a_hypernetwork_learns_another_hypernetworks_effect():
    teacher, student = Rig(activation_func="relu"), Rig(activation_func="relu")
    g = torch.Generator().manual_seed(1)
    teacher.network.load_state_tensors({k: v + torch.randn(v.shape, generator=g) * 0.3  # a strong, non-zero teacher
                                        for k, v in teacher.network.state_tensors().items()})
    x, t, c = torch.randn(4, 4, 8, 8), torch.tensor([10.0, 200.0, 500.0, 900.0]), torch.randn(4, 6, CONTEXT)
    with torch.no_grad(), teacher.network.applied():
        target = teacher.unet(x, t, c)
    optimizer = torch.optim.Adam(student.network.parameters(), lr=3e-2)
    losses = []
    with student.network.applied():
        for _ in range(40):
            loss = torch.nn.functional.mse_loss(student.unet(x, t, c), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def test_state_round_trips_and_a_foreign_state_is_refused():
    rig = Rig()
    rig.trainer(max_steps=2).run()
    state = rig.network.state_tensors()
    other = Rig()
    other.network.load_state_tensors(state)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), other.network.state_tensors().values()))
    with pytest.raises(ValueError, match="layer_structure"):
        Rig(layer_structure=(1, 1)).network.load_state_tensors(state)


def test_resume_equals_uninterrupted(tmp_path):
    full = Rig()
    full.trainer(max_steps=6, batch_size=2).run()
    count = {"n": 0}
    first = Rig()
    t1 = first.trainer(Callbacks(should_stop=lambda: count.__setitem__("n", count["n"] + 1) or count["n"] > 3),
                       max_steps=6, batch_size=2)
    save_state(tmp_path / "state", t1, t1.run())
    second = Rig()
    t2 = second.trainer(max_steps=6, batch_size=2)
    t2.run(load_state(tmp_path / "state", t2))
    a, b = full.network.state_tensors(), second.network.state_tensors()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


@pytest.mark.parametrize("config", [{}, {"use_dropout": True, "layer_structure": (1, 2, 2, 1)}])
def test_stopping_at_max_steps_then_resuming_to_twice_equals_an_uninterrupted_run_bit_for_bit(tmp_path, config):
    """The node's resume: a run of N steps saves its state; continuing it to 2N gives the 2N run's file exactly (dropout
    masks included: the state records how many each dropout has drawn)."""
    def run(rig, max_steps, target, resume=None):
        fields = lambda step, epoch: {"name": target.stem, "step": step}
        TrainingRun(rig.trainer(max_steps=max_steps, batch_size=2), RunFiles(target, tmp_path / target.stem),
                    fields, export_dtype=torch.float32, write=save_hypernetwork).train(resume)
        return read_hypernetwork(target, [Root("hypernetworks", tmp_path)])

    whole = run(Rig(**config), 6, tmp_path / "whole.pt")
    half = run(Rig(**config), 3, tmp_path / "half.pt")
    resumed = run(Rig(**config), 6, tmp_path / "half.pt", resume=tmp_path / "half")
    assert half["step"] == 3 and resumed["step"] == 6
    states = [(w, i, k) for w in whole if isinstance(w, int) for i in (0, 1) for k in whole[w][i]]
    assert any(not torch.equal(half[w][i][k], whole[w][i][k]) for w, i, k in states)  # the test can fail
    assert all(torch.equal(resumed[w][i][k], whole[w][i][k]) for w, i, k in states)


def test_a_run_writes_the_pt_with_its_fields(tmp_path):
    rig = Rig(use_dropout=True, layer_structure=(1, 2, 2, 1))
    trainer = rig.trainer(max_steps=3)
    fields = lambda step, epoch: {"name": "run", "step": step, "sd_checkpoint": None, "sd_checkpoint_name": "base"}
    run = TrainingRun(trainer, RunFiles(tmp_path / "run.pt", tmp_path / "state"), fields,
                      export_dtype=torch.float32, write=save_hypernetwork)
    run.train()
    sd = read_hypernetwork(tmp_path / "run.pt", [Root("hypernetworks", tmp_path)])
    assert sd["step"] == 3 and sd["sd_checkpoint_name"] == "base" and sd["use_dropout"] is True
    assert sd["dropout_structure"] == [0.0, 0.3, 0.0, 0.0]  # A1111's rule: the last hidden layer only with lld
    assert sd[CONTEXT][0]["linear.0.weight"].dtype == torch.float32


def test_nan_and_wrong_suffix_are_refused_and_nothing_is_written(tmp_path):
    sd = Rig().network.export()
    sd[CONTEXT][1]["linear.0.bias"][0] = float("nan")
    with pytest.raises(ValueError, match=r"8\.v\.linear\.0\.bias hold NaN"):
        save_hypernetwork(tmp_path / "h.pt", sd)
    with pytest.raises(ValueError, match=r"should end in '\.pt'"):
        save_hypernetwork(tmp_path / "h.safetensors", Rig().network.export())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad,message", [
    (dict(layer_structure="2, 1"), "start and end with 1"), (dict(layer_structure="1, x, 1"), "e.g. '1, 2, 1'"),
    (dict(activation_func="gelu"), "both A1111 and ComfyUI"), (dict(weight_initialization="Zeros"), "A1111's")])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        if isinstance(bad.get("layer_structure"), str):
            parse_layer_structure(bad["layer_structure"])
        else:
            HypernetworkConfig(**bad)


def test_activations_are_comfyuis_table():
    assert list(ACTIVATIONS) == ["linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "softsign", "mish"]


class _Attn(torch.nn.Module):
    """A cross-attention layer with only its K / V projections, for counting parameters (never run)."""

    def __init__(self, width):
        super().__init__()
        self.to_k, self.to_v = (torch.nn.Linear(width, 4, device="meta") for _ in range(2))


def test_layer_structure_caps_the_layers_and_the_parameters_before_allocating(tmp_path):
    with pytest.raises(ValueError, match="makes 9 layers; at most 8"):
        parse_layer_structure("1," + "2," * 8 + "1")
    with pytest.raises(ValueError, match=r"layer_structure 1,16,16,16,16,16,16,16,1 makes .* parameters for the widths "
                                         r"\[2048\], above the 500,000,000 limit"):
        Hypernetwork(torch.nn.ModuleDict({"attn2": _Attn(2048)}),
                     HypernetworkConfig(layer_structure=(1,) + (16,) * 7 + (1,)))


def test_reading_a_saved_hypernetwork_refuses_a_link_out_of_its_roots(tmp_path):
    from atelier.core.paths import PathRefused
    rig = Rig()
    outside, root = tmp_path / "outside", tmp_path / "hypernetworks"
    outside.mkdir()
    root.mkdir()
    save_hypernetwork(outside / "real.pt", rig.network.export())
    (root / "link.pt").symlink_to(outside / "real.pt")
    with pytest.raises(PathRefused, match="link.pt' lies outside the allowed roots"):
        read_hypernetwork(root / "link.pt", [Root("hypernetworks", root)])
    assert isinstance(read_hypernetwork(outside / "real.pt", [Root("hypernetworks", outside)])[CONTEXT], list)
