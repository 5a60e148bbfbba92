"""B-tiny (CPU): does copy-machine training keep a character LoRA from learning the render style? Tiny-world figures.

The world (tests/tiny_world.py): 16×16 shapes × 4 colours × {flat, render}, a pixel-space rectified-flow model
pretrained on five shapes, a classifier reading shape / colour / style. The character is a "diamond" the base never
saw, drawn ONLY in the render style and captioned without a style word ("red diamond"), as a user's 3D renders are.
  (a) plain LoRA on the character images (and, as an ablation, the same with the copier images as
      regularisation but nothing merged);
  (b) copy-machine: a copier LoRA trained on the five known shapes in the render style (captioned the same way),
      merged into the base at 1.0; the target trained on the merged model with the copier images as regularisation
      (weight 1, repeats 1); the target shipped alone onto the ORIGINAL base;
  (c) a before/after slider (PairSliderLoss): before = flat, after = render, same shape, colour and position;
  (d) a text slider (TextSliderLoss, no images): target and neutral "<colour> <shape>", positive "…, render",
      negative "…, flat", enhance, on circle / square / triangle × every colour; P(render) at strengths −1, 0, +1
      on neutral, flat and render prompts (trained shapes and the held-out cross / ring), and colour / shape
      leakage on the neutral prompts. Expected: +1 raises P(render), −1 lowers it.
Measures per LoRA (same sampler seeds for base and LoRA): likeness = P(diamond) on "<colour> diamond, <style>"
prompts in both styles; style obedience = P(prompted style) on those; leakage on prompts about the other shapes
(circle, square, triangle, cross) = |ΔP(render)| (style), total-variation change of the colour and shape heads,
and pixel RMSE, base vs base + LoRA.
Usage: OMP_NUM_THREADS=1 python benchmarks/tiny_world.py [--seeds 0,1] [--steps 300]
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLIDER_SHAPES = ("circle", "square", "triangle")  # the text slider's target shapes; cross and ring stay held out
# (d) text sliders: (name, steps, lr, guidance_scale, denoise_steps); the short one is the host test's setting
SLIDER_RUNS = (("d_text_slider_3_steps", 3, 0.01, 4.0, 4), ("d_text_slider_40_steps", 40, 5e-3, 2.0, 10))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1", help="LoRA training seeds (each gives one row per method)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per LoRA")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent / "tests"))
    import conftest  # noqa: F401  registers this checkout as the package `atelier`
    import tiny_world as tw
    import torch

    from atelier.trainers.objectives import TextSliderLoss
    from atelier.trainers.pair_objective import PairSliderLoss
    from atelier.trainers.slider import SliderPrompts, prompt_samples

    started = time.perf_counter()
    world = tw.load_world()
    print(f"world ready in {time.perf_counter() - started:.0f} s ({tw.cache_path(world.config).name})", flush=True)
    sample_seeds = (100, 101)
    held = tw.dataset(tw.SHAPES, tw.COLOURS, tw.STYLES, 2, seed=123)
    p = world.classifier.probabilities(torch.stack([d[0] for d in held]))
    accuracy = {head: (p[head].argmax(1) == torch.tensor([names.index(d[2][i]) for d in held])).float().mean().item()
                for head, names, i in (("shape", tw.SHAPES, 0), ("colour", list(tw.COLOURS), 1),
                                       ("style", tw.STYLES, 2))}
    base_known = {s: tw.likeness(world, None, s, seeds=sample_seeds) for s in tw.KNOWN}
    report = {"classifier_accuracy_held_out": accuracy, "base_on_known_shapes": base_known,
              "base_character": tw.likeness(world, None, seeds=sample_seeds), "runs": []}
    print(json.dumps({"accuracy": accuracy, "base_character": report["base_character"]}), flush=True)
    character = tw.dataset((tw.CHARACTER,), tw.COLOURS, ("render",), 6, seed=11, captioned_style=False)
    copier_set = tw.dataset(tw.KNOWN, tw.COLOURS, ("render",), 2, seed=12, captioned_style=False)
    flat = tw.dataset(tw.KNOWN[:3], tw.COLOURS, ("flat",), 3, seed=13)
    rendered = tw.dataset(tw.KNOWN[:3], tw.COLOURS, ("render",), 3, seed=13)  # same rng draws: same positions
    pairs = [(a[0], b[1], a[2], b[0]) for a, b in zip(rendered, flat)]  # (after, "<colour> <shape>, flat", ., before)

    def measure(name, seed, network, strength=1.0):
        row = {"method": name, "seed": seed, "strength": strength,
               **{f"like_{k}": v for k, v in tw.likeness(world, network, seeds=sample_seeds,
                                                                                strength=strength).items()},
               **{f"leak_{k}": v for k, v in tw.leakage(world, network, seeds=sample_seeds,
                                                         strength=strength).items()}}
        report["runs"].append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    def text_slider(name, seed, steps, lr, guidance, denoise_steps):
        sets = [SliderPrompts(tw.caption(s, c, None), tw.caption(s, c, "render"), tw.caption(s, c, "flat"),
                              tw.caption(s, c, None), "enhance", guidance, 64)
                for s in SLIDER_SHAPES for c in tw.COLOURS]
        slider = tw.train_lora(world, prompt_samples(sets, 3, downscale=64 // tw.SIZE), steps, lr=lr, seed=seed,
                               objective=TextSliderLoss(sets, denoise_steps=denoise_steps))
        for strength in (1.0, 0.5, 0.0, -0.5, -1.0):
            measure(name, seed, slider, strength)
            row = report["runs"][-1]
            row.update(steps=steps, lr=lr, guidance_scale=guidance, denoise_steps=denoise_steps)
            for style in (None, *tw.STYLES):  # P(render) on neutral ("red circle"), flat and render prompts
                for group, shapes in (("trained", SLIDER_SHAPES), ("other", tw.KNOWN[len(SLIDER_SHAPES):])):
                    captions = [tw.caption(s, c, style) for s in shapes for c in tw.COLOURS]
                    moved = tw.render(world, captions, sample_seeds, slider, strength)
                    row[f"p_render_{style or 'neutral'}_{group}"] = world.classifier.probabilities(
                        moved)["style"][:, 1].mean().item()
            neutral = tw.leakage(world, slider, seeds=sample_seeds, strength=strength, shapes=tw.KNOWN,
                                 styles=(None,))  # colour / shape change on the neutral prompts themselves
            row.update({f"neutral_leak_{k}": v for k, v in neutral.items()})
            print(json.dumps({k: round(v, 3) for k, v in row.items() if "p_render" in k or "neutral_leak" in k}),
                  flush=True)

    for seed in [int(s) for s in args.seeds.split(",")]:
        plain = tw.train_lora(world, character, args.steps, seed=seed)
        measure("a_plain", seed, plain)
        with_reg = tw.train_lora(world, character, args.steps, reg=copier_set, seed=seed)  # ablation: no merge
        measure("a_plain_with_regularisation", seed, with_reg)
        copier = tw.train_lora(world, copier_set, args.steps, seed=seed)
        measure("copier_itself", seed, copier)
        target = tw.train_lora(world, character, args.steps, unet=tw.merged_copy(world.unet, copier),
                               reg=copier_set, seed=seed)
        measure("b_copy_machine", seed, tw.ship(world, target))
        slider = tw.train_lora(world, pairs, args.steps, seed=seed, objective=PairSliderLoss())
        for strength in (1.0, -1.0):
            measure("c_slider", seed, slider, strength)
            for style in tw.STYLES:  # the slider's own effect: P(render) on the known shapes' prompts
                captions = [tw.caption(s, c, style) for s in tw.KNOWN for c in tw.COLOURS]
                moved = world.classifier.probabilities(tw.render(world, captions, sample_seeds, slider, strength))
                base = world.classifier.probabilities(tw.render(world, captions, sample_seeds))
                report["runs"][-1][f"slider_p_render_{style}_prompts"] = moved["style"][:, 1].mean().item()
                report["runs"][-1][f"base_p_render_{style}_prompts"] = base["style"][:, 1].mean().item()
            print(json.dumps({k: round(v, 3) for k, v in report["runs"][-1].items() if "p_render" in k}), flush=True)
        for name, steps, lr, guidance, denoise_steps in SLIDER_RUNS:
            text_slider(name, seed, steps, lr, guidance, denoise_steps)
    report["seconds"] = time.perf_counter() - started
    report["machine"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    out = HERE / "tiny_world_results.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out.name} after {report['seconds']:.0f} s")


if __name__ == "__main__":
    main()
