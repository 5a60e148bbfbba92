"""Optimizers, schedules, EMA and optimizer-state round trips, on tiny real models on CPU."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from atelier.trainers.optim import (EMA, LION_BETAS, OPTIMIZERS, SCHEDULERS, Lion, load_optimizer_state,
                                    lr_multiplier, make_optimizer, make_scheduler, optimizer_state_tensors)

LRS = {"adamw": 0.05, "adafactor": 0.05, "lion": 0.03, "sgd": 0.02}


def tiny_model(seed=0, hidden=8):
    """Linear(4, hidden) -> tanh -> Linear(hidden, 2), weights from a local generator."""
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def fixed_data(seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 4, generator=gen)
    return x, torch.randn(16, 2, generator=gen)


def groups_of(model, name, lr_scale=1.0):
    """Two groups as the trainer builds them: the first layer as "unet", the second as "te" at a lower lr."""
    lr = LRS[name] * lr_scale
    return [{"params": list(model[0].parameters()), "lr": lr, "name": "unet"},
            {"params": list(model[2].parameters()), "lr": lr / 2, "name": "te"}]


def train(model, optimizer, scheduler, steps, data):
    x, y = data
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_reduces_least_squares(name):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(32, 4, generator=gen)
    y = x @ torch.randn(4, 3, generator=gen)
    w = torch.nn.Parameter(torch.randn(4, 3, generator=gen))
    optimizer = make_optimizer(name, [{"params": [w], "lr": LRS[name], "name": "unet"}], weight_decay=0.0)

    def loss():
        return ((x @ w - y) ** 2).mean()

    start = loss().item()
    for _ in range(50):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.3 * start


def test_lion_matches_hand_written_reference():
    lr, beta1, beta2, wd = 0.1, 0.9, 0.99, 0.5
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    optimizer = make_optimizer("lion", [{"params": [p], "lr": lr, "name": "unet"}], betas=(beta1, beta2),
                               weight_decay=wd)
    grads = [[0.3, -0.2, 0.0], [-1.0, 0.5, 0.1], [0.2, 0.2, -0.05]]
    ref, m = [1.0, -2.0, 0.5], [0.0, 0.0, 0.0]
    for g in grads:
        p.grad = torch.tensor(g)
        optimizer.step()
        for i in range(3):
            c = beta1 * m[i] + (1 - beta1) * g[i]
            sign = (c > 0) - (c < 0)
            ref[i] = ref[i] - lr * (sign + wd * ref[i])
            m[i] = beta2 * m[i] + (1 - beta2) * g[i]
        assert torch.allclose(p.detach(), torch.tensor(ref), atol=1e-7, rtol=0)
        assert torch.allclose(optimizer.state[p]["exp_avg"], torch.tensor(m), atol=1e-7, rtol=0)


def test_lion_weight_decay_is_decoupled_and_scaled_by_lr():
    # Zero gradients give sign(0) = 0, so only the decay moves the weights: p * (1 - lr * wd) per step.
    for lr, wd in ((0.1, 0.5), (0.01, 0.5), (0.1, 0.0)):
        p = torch.nn.Parameter(torch.tensor([2.0, -4.0]))
        optimizer = Lion([p], lr=lr, weight_decay=wd)
        for _ in range(3):
            p.grad = torch.zeros(2)
            optimizer.step()
        assert torch.allclose(p.detach(), torch.tensor([2.0, -4.0]) * (1 - lr * wd) ** 3, atol=1e-6, rtol=0)


def test_lion_betas_default_to_the_papers_unless_chosen():
    p = torch.nn.Parameter(torch.zeros(2))
    default = make_optimizer("lion", [{"params": [p], "lr": 1e-4, "name": "unet"}])
    chosen = make_optimizer("lion", [{"params": [p], "lr": 1e-4, "name": "unet"}], betas=(0.95, 0.98))
    assert LION_BETAS == (0.9, 0.99)
    for optimizer, beta2 in ((default, 0.99), (chosen, 0.98)):
        p.grad = torch.tensor([1.0, -2.0])
        optimizer.step()  # the momentum starts at zero and tracks the gradient with beta2: (1 - beta2) * g
        assert torch.allclose(optimizer.state[p]["exp_avg"], (1 - beta2) * torch.tensor([1.0, -2.0]))
    adamw = make_optimizer("adamw", [{"params": [p], "lr": 1e-4, "name": "unet"}])
    p.grad = torch.tensor([1.0, -2.0])
    adamw.step()  # AdamW's betas stay its own (0.9, 0.999): first moment 0.1 g, second 0.001 g²
    assert torch.allclose(adamw.state[p]["exp_avg"], 0.1 * torch.tensor([1.0, -2.0]))
    assert torch.allclose(adamw.state[p]["exp_avg_sq"], 0.001 * torch.tensor([1.0, 4.0]))


def test_adamw_uses_foreach_on_cpu_and_groups_keep_names_and_lrs():
    model = tiny_model()
    optimizer = make_optimizer("adamw", groups_of(model, "adamw"), weight_decay=0.02)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults["fused"]
    assert [g["name"] for g in optimizer.param_groups] == ["unet", "te"]
    kinds = {name: type(make_optimizer(name, groups_of(model, name))) for name in OPTIMIZERS}
    assert kinds == {"adamw": torch.optim.AdamW, "adafactor": torch.optim.Adafactor, "lion": Lion,
                     "sgd": torch.optim.SGD}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_group_decays_at_its_own_lr(name):
    """With zero gradients only the decay moves a weight: by (1 - lr·wd), each group at its own lr."""
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(name, groups_of(model, name), weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    lr = LRS[name]
    factors = [1 - lr * 0.5] * 2 + [1 - lr / 2 * 0.5] * 2  # layer 0 ("unet") at lr, layer 2 ("te") at lr / 2
    for p, b, f in zip(model.parameters(), before, factors):
        assert torch.allclose(p.detach(), b * f, rtol=1e-6, atol=0), name


def test_sgd_momentum_carries_the_last_step():
    p = torch.nn.Parameter(torch.zeros(1))
    sgd = make_optimizer("sgd", [{"params": [p], "lr": 0.1, "name": "unet"}], momentum=0.8, weight_decay=0.0)
    for _ in range(2):
        p.grad = torch.ones(1)
        sgd.step()
    assert p.item() == pytest.approx(-(0.1 + 0.1 * 1.8))  # step 2 moves by lr (g + 0.8 g)


def test_empty_groups_are_dropped_before_lr_checks():
    model = tiny_model()
    optimizer = make_optimizer("adamw", [{"params": list(model.parameters()), "lr": 1e-3, "name": "unet"},
                                         {"params": [], "lr": 0.0, "name": "te"}])
    assert [g["name"] for g in optimizer.param_groups] == ["unet"]
    with pytest.raises(ValueError, match="No parameters to train"):
        make_optimizer("adamw", [{"params": [], "lr": 1e-3, "name": "unet"}])


def test_bad_optimizer_inputs():
    model = tiny_model()
    with pytest.raises(ValueError) as err:
        make_optimizer("adam", groups_of(model, "adamw"))
    assert "'adam'" in str(err.value) and all(name in str(err.value) for name in OPTIMIZERS)
    for lr in (0.0, -1e-4, float("nan")):
        groups = groups_of(model, "adamw")
        groups[1]["lr"] = lr
        with pytest.raises(ValueError, match=f"te learning rate must be > 0, got {lr}"):
            make_optimizer("adamw", groups)
    groups = groups_of(model, "adamw")
    groups[0]["lr"] = 0
    with pytest.raises(ValueError, match="unet learning rate must be > 0, got 0;"):
        make_optimizer("lion", groups)


def test_lr_multiplier_exact_values():
    lm = lr_multiplier
    # Warmup: (step + 1) / (warmup + 1), then the schedule starts at 1 exactly at step == warmup.
    assert [lm("constant", s, 10, 4) for s in range(6)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    for name in SCHEDULERS:
        assert lm(name, 3, 20, warmup_steps=4) == 4 / 5
        assert lm(name, 4, 20, warmup_steps=4) == 1.0
        assert lm(name, 0, 20) == 1.0
    assert [lm("linear", s, 10) for s in (0, 5, 9, 10, 50)] == pytest.approx([1.0, 0.5, 0.1, 0.0, 0.0])
    assert lm("linear", 7, 12, warmup_steps=2) == pytest.approx(0.5)
    assert lm("linear", 9, 10, min_lr_ratio=0.2) == 0.2
    assert lm("linear", 2, 10, min_lr_ratio=0.2) == pytest.approx(0.8)
    assert lm("linear", 0, 10, warmup_steps=5, min_lr_ratio=0.5) == 1 / 6  # warmup is not floored
    assert lm("cosine", 5, 10) == pytest.approx(0.5)
    assert lm("cosine", 2, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lm("cosine", 10, 10, min_lr_ratio=0.1) == 0.1
    # Two cycles over 10 steps: the cosine restarts at step 5.
    restarts = [lm("cosine_with_restarts", s, 10, num_cycles=2) for s in (0, 2, 4, 5, 7, 10)]
    assert restarts == pytest.approx([1.0, 0.5 * (1 + math.cos(0.4 * math.pi)), 0.5 * (1 + math.cos(0.8 * math.pi)),
                                      1.0, 0.5 * (1 + math.cos(0.4 * math.pi)), 0.0])
    assert lm("cosine_with_restarts", 6, 10, num_cycles=1) == lm("cosine", 6, 10)
    assert lm("cosine_with_restarts", 9, 10, num_cycles=2, min_lr_ratio=0.3) == 0.3
    assert lm("polynomial", 5, 10, power=2.0) == pytest.approx(0.25)
    assert lm("polynomial", 5, 10, power=0.5) == pytest.approx(math.sqrt(0.5))
    assert all(lm("polynomial", s, 10) == pytest.approx(lm("linear", s, 10)) for s in range(10))
    assert lm("constant", 99, 10) == 1.0
    assert lm("constant", 0, 1) == 1.0 and lm("cosine", 0, 1) == 1.0


def test_bad_schedule_inputs():
    with pytest.raises(ValueError) as err:
        lr_multiplier("exponential", 0, 10)
    assert "'exponential'" in str(err.value) and all(name in str(err.value) for name in SCHEDULERS)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_multiplier("linear", 0, 10, warmup_steps=10)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_multiplier("linear", 0, 10, warmup_steps=-1)
    with pytest.raises(ValueError, match="total_steps"):
        lr_multiplier("linear", 0, 0)
    with pytest.raises(ValueError, match="num_cycles"):
        lr_multiplier("cosine_with_restarts", 0, 10, num_cycles=0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_multiplier("linear", -1, 10)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="warmup_steps"):
        make_scheduler(optimizer, "cosine", 5, warmup_steps=7)
    with pytest.raises(ValueError, match="constant"):
        make_scheduler(optimizer, "step", 5)


def test_make_scheduler_drives_each_group_from_its_own_base_lr():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    optimizer = make_optimizer("sgd", [{"params": [a], "lr": 1e-3, "name": "unet"},
                                       {"params": [b], "lr": 1e-4, "name": "te"}])
    scheduler = make_scheduler(optimizer, "cosine", 10, warmup_steps=3, min_lr_ratio=0.1)
    for k in range(12):
        expected = lr_multiplier("cosine", k, 10, warmup_steps=3, min_lr_ratio=0.1)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3 * expected, 1e-4 * expected],
                                                                          rel=1e-12)
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # floored at 0.1 after the end


def test_ema_decay_by_hand_without_and_with_warmup():
    for warmup, decays in ((False, [0.9, 0.9, 0.9]), (True, [0.1, 2 / 11, 0.25])):
        p = torch.nn.Parameter(torch.tensor(1.0))
        ema = EMA([p], decay=0.9, warmup=warmup)
        expected = 1.0
        for value, d in zip((2.0, 3.0, 4.0), decays):
            assert ema.current_decay() == pytest.approx(d)
            with torch.no_grad():
                p.fill_(value)
            ema.update([p])
            expected = d * expected + (1 - d) * value
            assert ema.shadow[0].item() == pytest.approx(expected, abs=1e-6)
        assert ema.updates == 3
    # Warmup never exceeds the configured decay.
    ema = EMA([p], decay=0.5, warmup=True)
    ema.updates = 1000
    assert ema.current_decay() == 0.5


def test_ema_keeps_float32_shadows_and_swapped_restores():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16))
    q = torch.nn.Parameter(torch.tensor([[0.5, -0.5]]))
    ema = EMA([p, q], decay=0.5, warmup=False)
    assert [s.dtype for s in ema.shadow] == [torch.float32, torch.float32]
    with torch.no_grad():
        p.add_(2.0)
        q.mul_(3.0)
    ema.update([p, q])
    p_before, q_before = p.detach().clone(), q.detach().clone()
    with ema.swapped([p, q]):
        assert torch.equal(p.detach(), torch.tensor([2.0, 3.0, 4.0], dtype=torch.bfloat16))
        assert torch.equal(q.detach(), torch.tensor([[1.0, -1.0]]))
    assert torch.equal(p.detach(), p_before) and torch.equal(q.detach(), q_before)
    with pytest.raises(RuntimeError, match="inside"), ema.swapped([p, q]):
        raise RuntimeError("inside")
    assert torch.equal(p.detach(), p_before) and torch.equal(q.detach(), q_before)
    with pytest.raises(ValueError, match="tracks 2 parameters but got 1"):
        ema.update([p])


def test_ema_state_round_trip_through_files(tmp_path):
    model = tiny_model()
    params = list(model.parameters())
    ema = EMA(params, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            for p in params:
                p.mul_(0.9)
        ema.update(params)
    tensors = ema.state_tensors()
    assert sorted(tensors) == sorted(f"ema.{i}" for i in range(len(params)))
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in tensors.values())
    save_file(tensors, tmp_path / "ema.safetensors")
    (tmp_path / "ema.json").write_text(json.dumps(ema.state_json()))

    restored = EMA(params, decay=0.5, warmup=False)
    restored.load_state(load_file(tmp_path / "ema.safetensors"), json.loads((tmp_path / "ema.json").read_text()))
    assert restored.state_json() == {"decay": 0.99, "updates": 3, "warmup": True}
    ema.update(params)
    restored.update(params)
    assert all(torch.equal(a, b) for a, b in zip(ema.shadow, restored.shadow))

    other = EMA(list(tiny_model(hidden=6).parameters()))
    with pytest.raises(ValueError, match="another configuration"):
        other.load_state(tensors, ema.state_json())
    with pytest.raises(ValueError, match="another configuration"):
        EMA(params[:2]).load_state(tensors, ema.state_json())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_round_trip_is_bit_identical(name, tmp_path):
    data = fixed_data()
    schedule = {"name": "cosine", "total_steps": 10, "warmup_steps": 2}

    straight = tiny_model()
    optimizer = make_optimizer(name, groups_of(straight, name))
    train(straight, optimizer, make_scheduler(optimizer, **schedule), 10, data)

    first = tiny_model()
    optimizer = make_optimizer(name, groups_of(first, name))
    train(first, optimizer, make_scheduler(optimizer, **schedule), 5, data)
    tensors, meta = optimizer_state_tensors(optimizer)
    assert tensors and all(t.device.type == "cpu" and t.is_contiguous() for t in tensors.values())
    assert all(key.startswith("state.") for key in tensors)
    save_file(tensors, tmp_path / "optimizer.safetensors")
    (tmp_path / "optimizer.json").write_text(json.dumps(meta))

    resumed = tiny_model(seed=5)
    resumed.load_state_dict(first.state_dict())
    optimizer = make_optimizer(name, groups_of(resumed, name))
    scheduler = make_scheduler(optimizer, **schedule)
    load_optimizer_state(optimizer, load_file(tmp_path / "optimizer.safetensors"),
                         json.loads((tmp_path / "optimizer.json").read_text()))
    scheduler.last_epoch = 5
    train(resumed, optimizer, scheduler, 5, data)

    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(first.parameters()), next(straight.parameters()))  # the first half really stopped


def test_optimizer_state_keeps_hyperparameters_and_types():
    model = tiny_model()
    optimizer = make_optimizer("adafactor", groups_of(model, "adafactor"))
    train(model, optimizer, make_scheduler(optimizer, "linear", 10), 2, fixed_data())
    tensors, meta = optimizer_state_tensors(optimizer)
    json.dumps(meta)
    assert tensors["state.0.step"].shape == () and tensors["state.0.step"].item() == 2.0
    assert "state.0.row_var" in tensors and "state.1.variance" in tensors
    fresh = make_optimizer("adafactor", groups_of(tiny_model(), "adafactor", lr_scale=3.0))
    load_optimizer_state(fresh, tensors, meta)
    assert fresh.param_groups[0]["eps"] == (None, 1e-3)  # tuples survive JSON
    assert [g["lr"] for g in fresh.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert [g["name"] for g in fresh.param_groups] == ["unet", "te"]
    # The loaded state is a copy: training on does not write into the caller's tensors.
    step_before = tensors["state.0.step"].clone()
    train(tiny_model(), fresh, make_scheduler(fresh, "constant", 10), 1, fixed_data())
    assert torch.equal(tensors["state.0.step"], step_before)


def test_mismatched_optimizer_state_is_refused():
    model = tiny_model()
    optimizer = make_optimizer("adamw", groups_of(model, "adamw"))
    train(model, optimizer, make_scheduler(optimizer, "constant", 10), 2, fixed_data())
    tensors, meta = optimizer_state_tensors(optimizer)
    narrower = make_optimizer("adamw", groups_of(tiny_model(hidden=6), "adamw"))
    with pytest.raises(ValueError, match="other shapes; the resume state belongs to another config"):
        load_optimizer_state(narrower, tensors, meta)
    fewer = make_optimizer("adamw", [{"params": list(tiny_model()[0].parameters()), "lr": 0.1, "name": "unet"}])
    with pytest.raises(ValueError, match="for 4 parameters, this optimizer has 2"):
        load_optimizer_state(fewer, tensors, meta)
    lion = make_optimizer("lion", groups_of(tiny_model(), "lion"))
    with pytest.raises(ValueError, match="for optimizer AdamW, this run uses Lion"):
        load_optimizer_state(lion, tensors, meta)
