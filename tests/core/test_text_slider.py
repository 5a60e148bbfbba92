"""Text sliders (Concept Sliders / LECO objective): the target formula, teacher at strength 0 without gradient,
determinism, prompt validation and prompts.yaml parsing, and a tiny model that learns the direction."""

import pytest
import torch

from tiny_models import TinyTextEncoder, TinyUNet

from atelier.trainers import objectives as ob
from atelier.trainers.loop import Trainer, TrainConfig
from atelier.trainers.network import LoRANetwork, NetworkConfig
from atelier.trainers.slider import SliderPrompts, objective_record, parse_prompts, prompt_samples


class FakeNetwork:
    def __init__(self):
        self.multiplier = 1.0

    def set_multiplier(self, value):
        self.multiplier = value


PROMPT_VALUES = {"person": 1.0, "smiling": 5.0, "frowning": 2.0, "neutral": 0.5}


class SpyDenoiser:
    """A denoiser returning a per-prompt constant, recording (prompt, multiplier, grad enabled) of every call."""

    def __init__(self, network):
        self.network, self.calls, self.weight = network, [], torch.ones((), requires_grad=True)

    def __call__(self, x_t, sigma, cond, **extra):
        prompt = {v: k for k, v in PROMPT_VALUES.items()}[float(cond.flatten()[0])]
        self.calls.append((prompt, self.network.multiplier, torch.is_grad_enabled()))
        return torch.full_like(x_t, PROMPT_VALUES[prompt]) * self.weight * (1 + self.network.multiplier)


def conditioning(prompts):
    return torch.tensor([[PROMPT_VALUES[p]] for p in prompts]), {}


def fake_batch(keys=(0,), seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(keys), 4, 4, 4, generator=g)
    sigma = torch.full((len(keys),), 3.0)
    return ob.NoisedBatch(torch.zeros_like(noise), noise, sigma, noise, torch.zeros(1), keys=keys)


@pytest.mark.parametrize("action, sign", [("enhance", 1.0), ("erase", -1.0)])
def test_target_is_neutral_plus_or_minus_guidance_times_direction(action, sign):
    net = FakeNetwork()
    spy = SpyDenoiser(net)
    sets = [SliderPrompts("person", "smiling", "frowning", "neutral", action=action, guidance_scale=4.0)]
    loss = ob.TextSliderLoss(sets, denoise_steps=4)
    loss.bind(conditioning, net)
    got = loss(spy, ob.DiscreteEps(), fake_batch())
    # teacher at multiplier 0: e = value·1; student at +1: 2·value(person)
    target = 0.5 + sign * 4.0 * (5.0 - 2.0)
    assert got.shape == (1,)
    assert torch.allclose(got, torch.tensor([(2 * 1.0 - target) ** 2]))


def test_teacher_runs_at_strength_zero_without_grad_and_student_at_one():
    net = FakeNetwork()
    spy = SpyDenoiser(net)
    loss = ob.TextSliderLoss([SliderPrompts("person", "smiling", "frowning", "neutral")], denoise_steps=4)
    loss.bind(conditioning, net)
    out = loss(spy, ob.DiscreteEps(), fake_batch())
    teacher = [c for c in spy.calls if c[1] == 0.0]
    assert sorted(p for p, _, _ in teacher) == ["frowning", "neutral", "smiling"]
    assert not any(grad for _, _, grad in teacher)
    path = spy.calls[:-4]  # the partial denoise: CFG pairs (target, unconditional) with the LoRA on, no grad
    assert path and all(m == 1.0 and not grad for _, m, grad in path)
    assert {p for p, _, _ in path} == {"person", "frowning"}
    assert spy.calls[-1] == ("person", 1.0, True)
    assert net.multiplier == 1.0  # restored
    out.sum().backward()
    assert spy.weight.grad is not None


def test_bidirectional_also_trains_the_mirror_at_minus_one():
    net = FakeNetwork()
    spy = SpyDenoiser(net)
    loss = ob.TextSliderLoss([SliderPrompts("person", "smiling", "frowning", "neutral")], denoise_steps=2,
                             bidirectional=True)
    loss.bind(conditioning, net)
    loss(spy, ob.DiscreteEps(), fake_batch())
    assert spy.calls[-1] == ("person", -1.0, True) and net.multiplier == 1.0


def test_strength_restores_one_even_on_error():
    net = FakeNetwork()
    with pytest.raises(KeyError):
        with ob.strength(net, 0.0):
            assert net.multiplier == 0.0
            raise KeyError("x")
    assert net.multiplier == 1.0


def test_schedule_ends_exactly_at_the_loops_sigma():
    loss = ob.TextSliderLoss([SliderPrompts("a", "b", "c")], denoise_steps=10)
    ms = ob.DiscreteEps()
    sigmas = loss.schedule(ms, 2.0)
    assert sigmas[-1] == 2.0 and all(a > b for a, b in zip(sigmas, sigmas[1:]))
    assert sigmas[0] == pytest.approx(ms.percent_to_sigma(1e-4))


@pytest.mark.parametrize("fields, message", [
    ({"target": "  "}, "'target' is empty"),
    ({"target": "person", "positive": "smile", "unconditional": "smile"}, "'positive' and 'negative'"),
    ({"target": "person", "positive": "a", "guidance_scale": float("nan")}, "'guidance_scale' must be a finite"),
    ({"target": "person", "positive": "a", "action": "boost"}, "'action' must be one of enhance, erase"),
    ({"target": "person", "positive": "a", "resolution": 500}, "multiple of 8"),
])
def test_bad_prompt_sets_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        SliderPrompts(**fields).validate()


LECO_YAML = """
# LECO / sliders style
- target: "person" # what the slider acts on
  positive: "person, smiling"
  unconditional: 'person, frowning'
  neutral: person
  action: "enhance"
  guidance_scale: 4
  resolution: 512
  batch_size: 1
- target: "van gogh"
  action: erase
"""


def test_prompts_yaml_subset_and_json_give_the_same_sets():
    sets = parse_prompts(LECO_YAML)
    assert sets[0] == SliderPrompts("person", "person, smiling", "person, frowning", "person", "enhance", 4, 512, 1)
    assert sets[1].positive == "van gogh" and sets[1].unconditional == "" and sets[1].neutral == ""
    as_json = parse_prompts('[{"target": "person", "positive": "person, smiling", "unconditional": '
                            '"person, frowning", "neutral": "person", "action": "enhance", "guidance_scale": 4}]')
    assert as_json[0] == sets[0]


@pytest.mark.parametrize("text, message", [
    ("- target: a\n  colour: red\n  shape: x\n", r"unknown key\(s\) colour, shape; known: target"),
    ("target: a\n", "expected '- key: value'"),
    ("- target: a\n  positive:\n    - nested\n", "expected 'key: value'"),
    ("- target: [a, b]\n", "YAML feature"),
    ("- positive: a\n", "'target' is missing"),
    ("- target: a\n  target: b\n", "appears twice"),
    ("", "is empty"),
    ("[1, 2", "not valid"),
    ("- target: a\n  positive: a\n  unconditional: a\n", "no direction"),
])
def test_prompts_yaml_outside_the_subset_is_refused_clearly(text, message):
    with pytest.raises(ValueError, match=message):
        parse_prompts(text)


def test_samples_carry_no_image_and_the_record_names_the_method():
    sets = parse_prompts(LECO_YAML)
    samples = prompt_samples(sets, latent_channels=4)
    assert [s.key for s in samples] == [0, 1] and samples[0].latent.shape == (4, 64, 64)
    assert samples[0].caption == "person" and not samples[0].latent.any()
    record = objective_record(sets, 50, 3.0, False)
    assert record["method"] == "text_slider" and record["sets"][0]["positive"] == "person, smiling"


class Rig:
    def __init__(self):
        torch.manual_seed(0)
        self.unet, self.te, self.ms = TinyUNet(), TinyTextEncoder(), ob.DiscreteEps()
        self.network = LoRANetwork({"lora_unet": self.unet}, NetworkConfig(rank=4, alpha=4.0), seed=0)

    def denoise(self, x_t, sigma, cond, **extra):
        return self.unet(self.ms.calculate_input(sigma, x_t), self.ms.timestep(sigma), cond)

    def encode(self, captions):
        return self.te(captions), {}

    def trainer(self, sets, steps, seed=0):
        config = TrainConfig(unet_lr=1e-2, max_steps=steps, save_every_epochs=0, seed=seed)
        objective = ob.TextSliderLoss(sets, denoise_steps=4)
        return Trainer(config, self.network, self.denoise, self.ms, prompt_samples(sets, 4, downscale=64),
                       self.encode, objective=objective)


SETS = [SliderPrompts("a person", "a person smiling", "a person frowning", "a person", "enhance", 2.0, 512)]


def test_same_seed_same_loss():
    losses = [Rig().trainer(SETS, 3).run().losses for _ in range(2)]
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_tiny_model_learns_the_direction_and_its_inverse_at_minus_one():
    rig = Rig()
    rig.trainer(SETS, 60).run()
    g = torch.Generator().manual_seed(123)
    x, sigma = torch.randn(8, 4, 8, 8, generator=g) * 3, torch.full((8,), 3.0)
    cond = lambda text: rig.te([text] * 8)
    with torch.no_grad(), rig.network.applied():
        outs = {}
        for m in (0.0, 1.0, -1.0):
            with ob.strength(rig.network, m):
                outs[m] = rig.denoise(x, sigma, cond("a person"))
        with ob.strength(rig.network, 0.0):
            smiling, frowning = cond("a person smiling"), cond("a person frowning")
            direction = rig.denoise(x, sigma, smiling) - rig.denoise(x, sigma, frowning)
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    assert cos(outs[1.0] - outs[0.0], direction) > 0.3
    assert cos(outs[-1.0] - outs[0.0], direction) < -0.3


@pytest.mark.parametrize("ms", [ob.DiscreteEps(), ob.DiscreteV(), ob.RectifiedFlow()], ids=["eps", "v", "flow"])
def test_the_raw_output_target_moves_the_denoised_image_toward_positive_in_every_family(ms):
    """LECO and the sliders write the target for ε-prediction; here it is built in each family's raw output (ε, v,
    flow velocity noise − x0). The denoised estimate is affine in the output with one slope b(σ) for all prompts, so
    the target's x0̂ is x0(neutral) + guidance·(x0(positive) − x0(negative)) in every family: same sign everywhere."""
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 4, 4, 4, generator=g) * 2
    clean = {p: torch.randn(1, 4, 4, 4, generator=g) for p in ("neutral", "positive", "negative")}
    sigma = torch.tensor([ms.percent_to_sigma(0.4)])
    out = {p: ob.prediction_target(ms, sigma, x_t, x0) for p, x0 in clean.items()}  # what a perfect model returns
    target = out["neutral"] + 3.0 * (out["positive"] - out["negative"])  # enhance, as TextSliderLoss builds it
    denoised = ms.calculate_denoised(sigma, target, x_t)
    expected = clean["neutral"] + 3.0 * (clean["positive"] - clean["negative"])
    assert torch.allclose(denoised, expected, atol=1e-4)


def test_prompts_yaml_caps_the_sets_and_the_pixels_of_one_set():
    from atelier.trainers.slider import MAX_SETS, parse_prompts
    many = "\n".join(f"- target: t{i}\n  positive: p\n  unconditional: u" for i in range(MAX_SETS + 1))
    with pytest.raises(ValueError, match=f"holds {MAX_SETS + 1} prompt sets; at most {MAX_SETS}"):
        parse_prompts(many)
    assert len(parse_prompts(many.rsplit("\n- ", 1)[0])) == MAX_SETS
    with pytest.raises(ValueError, match=r"set 1: resolution² × batch_size is 4096² × 2"):
        parse_prompts("- target: a\n  positive: b\n  resolution: 4096\n  batch_size: 2")


def test_prompts_yaml_comment_after_an_apostrophe_and_bad_escapes():
    from atelier.trainers.slider import parse_flat_yaml
    (item,) = parse_flat_yaml("- target: a person's face # subject\n  positive: 'it''s # kept'  # gone\n"
                              '  neutral: "say \\"hi\\" # kept"  # gone')
    assert item == {"target": "a person's face", "positive": "it's # kept", "neutral": 'say "hi" # kept'}
    with pytest.raises(ValueError, match=r"prompts_yaml, line 2: the double-quoted text .* has a bad escape"):
        parse_flat_yaml('- target: a\n  positive: "bad \\q escape"')
