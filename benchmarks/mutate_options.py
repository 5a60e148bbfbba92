"""Option mutation run: switches ONE training option off at a time and checks that at least one test fails.

A measurement of the test suite, not of the code: each mutant is a small source edit that makes one training option a
no-op (e.g. `if cfg.noise_offset:` → `if False:`), applied to a temporary copy of this checkout (the real tree is
never touched). The core tier then runs on that copy (ruff's lint test left out: a lint complaint is not a test
noticing the option) and the mutant counts as *killed* when at least one test fails, or times out; a *survivor* is an
option the suite cannot tell apart from its absence. Mutants whose pattern is not found exactly once are *stale*: the
source moved, so the table below needs an update (the script then exits non-zero).

Usage: python benchmarks/mutate_options.py [--only NAME ...] [--host tests/host/test_host_training.py ...]
       [--json out.json] [--timeout 900] [--ref COMMIT] [--list]
--host runs the named host-tier files (a real ComfyUI, slow) for the mutants the core tier did not kill.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEARCHED = ("trainers", "nodes/train_adapter.py")  # where training options live; a pattern may move between files
# Core files most likely to notice a training option run first, so a killed mutant stops (-x) early.
FIRST = ("test_objectives.py", "test_memory.py", "test_network.py", "test_optim.py", "test_trainer.py",
         "test_options.py", "test_train_data.py", "test_faults.py")
LEFT_OUT = ("test_lint.py",)


@dataclass(frozen=True)
class Mutant:
    name: str  # unique, short
    option: str  # the training option it switches off (TrainConfig / NetworkConfig field or dataset setting)
    old: str  # exact source text, found exactly once under SEARCHED
    new: str  # the same place with the option made a no-op


AUTOCAST = "if self.cfg.precision == \"fp32\":\n            return torch.autocast"
DROPOUT = "if self.dropout:\n                keep = torch.rand(lx.shape"

# Each `new` keeps the random draws of `old` where it can, so a mutant changes the option and nothing else.
MUTANTS = [
    Mutant("random_flip", "random_flip", "flip = s.random_flip and torch.rand((), generator=g).item() < 0.5",
           "flip = s.random_flip and torch.rand((), generator=g).item() < 0.5 and False"),
    Mutant("random_flip_mirror_ignored", "random_flip",
           "latent = s.latent if not flip else (s.flipped_latent if s.flipped_latent is not None\n"
           "                                                else s.latent.flip(-1))",
           "latent = s.latent if not flip else s.latent.flip(-1)"),
    Mutant("random_flip_mirror_not_encoded", "random_flip",
           "images = [image, flip_horizontal(image)] if p.sample.random_flip else [image]", "images = [image]"),
    Mutant("caption_dropout", "caption_dropout",
           "if cfg.caption_dropout and torch.rand((), generator=g).item() < cfg.caption_dropout:",
           "if cfg.caption_dropout and torch.rand((), generator=g).item() < cfg.caption_dropout and False:"),
    Mutant("tag_dropout", "tag_dropout",
           "tail = [t for t in tail if torch.rand((), generator=g).item() >= cfg.tag_dropout]",
           "tail = [t for t in tail if torch.rand((), generator=g).item() >= cfg.tag_dropout or True]"),
    Mutant("caption_shuffle", "caption_shuffle",
           "tail = [tail[j] for j in torch.randperm(len(tail), generator=g).tolist()]",
           "tail = [tail[j] for j in sorted(torch.randperm(len(tail), generator=g).tolist())]"),
    Mutant("keep_tokens", "keep_tokens", "head, tail = tags[:cfg.keep_tokens], tags[cfg.keep_tokens:]",
           "head, tail = [], tags"),
    Mutant("min_snr_gamma", "min_snr_gamma",
           "ob.DenoisingLoss(config.loss, config.huber_delta, config.min_snr_gamma)",
           "ob.DenoisingLoss(config.loss, config.huber_delta, 0.0)"),
    Mutant("min_timestep_percent", "min_timestep_percent",
           "ob.sample_sigmas(self.ms, gens, cfg.min_timestep_percent, cfg.max_timestep_percent)",
           "ob.sample_sigmas(self.ms, gens, 0.0, cfg.max_timestep_percent)"),
    Mutant("max_timestep_percent", "max_timestep_percent",
           "ob.sample_sigmas(self.ms, gens, cfg.min_timestep_percent, cfg.max_timestep_percent)",
           "ob.sample_sigmas(self.ms, gens, cfg.min_timestep_percent, 1.0)"),
    Mutant("timestep_range_sampler", "min/max_timestep_percent",
           "lo, hi = max(min_percent, eps), min(max_percent, 1 - eps)", "lo, hi = eps, 1 - eps"),
    Mutant("noise_offset", "noise_offset", "ob.offset_noise(tuple(s.latent.shape), g, cfg.noise_offset)",
           "ob.offset_noise(tuple(s.latent.shape), g, 0.0)"),
    Mutant("noise_offset_objective", "noise_offset",
           "noise = noise + offset * torch.randn((shape[0], 1, 1), generator=generator)",
           "noise = noise + 0.0 * torch.randn((shape[0], 1, 1), generator=generator)"),
    Mutant("loss_choice", "loss", "ob.DenoisingLoss(config.loss, config.huber_delta, config.min_snr_gamma)",
           "ob.DenoisingLoss(\"l2\", config.huber_delta, config.min_snr_gamma)"),
    Mutant("huber_delta", "huber_delta", "ob.DenoisingLoss(config.loss, config.huber_delta, config.min_snr_gamma)",
           "ob.DenoisingLoss(config.loss, 0.1, config.min_snr_gamma)"),
    Mutant("loss_l1_objective", "loss", "return (pred.float() - target.float()).abs()",
           "return (pred.float() - target.float()) ** 2"),
    Mutant("loss_huber_objective", "loss",
           "return torch.nn.functional.huber_loss(pred.float(), target.float(), reduction=\"none\", "
           "delta=huber_delta)", "return (pred.float() - target.float()) ** 2"),
    Mutant("prior_loss_weight", "prior_loss_weight", "weights.append(s.loss_weight)", "weights.append(1.0)"),
    Mutant("prior_loss_weight_data", "prior_loss_weight",
           "weights = {s.name: (s.prior_loss_weight if s.role == \"regularization\" else 1.0) for s in "
           "dataset.subsets}", "weights = {s.name: 1.0 for s in dataset.subsets}"),
    Mutant("masked_loss", "masked_loss", "per_sample = (elementwise * batch.mask).sum(dim=(1, 2, 3)) / area",
           "per_sample = elementwise.mean(dim=(1, 2, 3))"),
    Mutant("masked_loss_data", "masked_loss", "mask=lat.get(\"mask\") if masks else None", "mask=None"),
    Mutant("max_grad_norm", "max_grad_norm", "if self.cfg.max_grad_norm > 0:", "if False:"),
    Mutant("gradient_checkpointing", "gradient_checkpointing",
           "return checkpoint(original, *args, use_reentrant=False, **kwargs)", "return original(*args, **kwargs)"),
    Mutant("ema_off", "ema_decay", "self.ema = EMA(self.params, config.ema_decay) if config.ema_decay > 0 else None",
           "self.ema = None"),
    Mutant("ema_never_updated", "ema_decay", "if self.ema and applied:", "if False:"),
    Mutant("ema_decay_ignored", "ema_decay", "EMA(self.params, config.ema_decay)", "EMA(self.params, 0.999)"),
    Mutant("warmup", "warmup_steps",
           "lr_multiplier(self.cfg.scheduler, step, self.total_steps, self.cfg.warmup_steps,",
           "lr_multiplier(self.cfg.scheduler, step, self.total_steps, 0,"),
    Mutant("warmup_schedule", "warmup_steps",
           "if step < warmup_steps:\n        return (step + 1) / (warmup_steps + 1)",
           "if False:\n        return (step + 1) / (warmup_steps + 1)"),
    Mutant("scheduler_choice", "scheduler", "lr_multiplier(self.cfg.scheduler, step,",
           "lr_multiplier(\"constant\", step,"),
    Mutant("scheduler_linear", "scheduler=linear", "value = 1.0 - p", "value = 1.0"),
    Mutant("scheduler_cosine", "scheduler=cosine", "value = 0.5 * (1.0 + math.cos(math.pi * p))", "value = 1.0"),
    Mutant("scheduler_cosine_with_restarts", "scheduler=cosine_with_restarts",
           "value = 0.0 if p >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * p) % 1.0)))",
           "value = 0.5 * (1.0 + math.cos(math.pi * p))"),
    Mutant("scheduler_polynomial", "scheduler=polynomial", "value = (1.0 - p) ** power", "value = 1.0 - p"),
    Mutant("num_cycles_power_wiring", "num_cycles/power",
           "self.cfg.warmup_steps, self.cfg.num_cycles,\n                          self.cfg.power)",
           "self.cfg.warmup_steps, 1,\n                          1.0)"),
    Mutant("weight_decay", "weight_decay", "make_optimizer(config.optimizer, groups, weight_decay=config.weight_decay)",
           "make_optimizer(config.optimizer, groups, weight_decay=0.0)"),
    Mutant("weight_decay_adamw", "weight_decay (adamw)", "eps=eps, weight_decay=weight_decay, **speed)",
           "eps=eps, weight_decay=0.0, **speed)"),
    Mutant("weight_decay_adafactor", "weight_decay (adafactor)",
           "torch.optim.Adafactor(groups, lr=lr0, weight_decay=weight_decay)",
           "torch.optim.Adafactor(groups, lr=lr0, weight_decay=0.0)"),
    Mutant("weight_decay_lion", "weight_decay (lion)", "betas=lion_betas, weight_decay=weight_decay)",
           "betas=lion_betas, weight_decay=0.0)"),
    Mutant("weight_decay_sgd", "weight_decay (sgd)", "momentum=momentum, weight_decay=weight_decay)",
           "momentum=momentum, weight_decay=0.0)"),
    Mutant("optimizer_choice", "optimizer", "make_optimizer(config.optimizer, groups,",
           "make_optimizer(\"adamw\", groups,"),
    Mutant("grad_accum", "grad_accum",
           "group = batches[state.batch_in_epoch:state.batch_in_epoch + cfg.grad_accum]",
           "group = batches[state.batch_in_epoch:state.batch_in_epoch + 1]"),
    Mutant("train_text_encoder", "train_text_encoder",
           "if train_text_encoder:\n            groups.append", "if False:\n            groups.append"),
    Mutant("te_lr", "te_lr", "groups.append({\"params\": te_params, \"lr\": te_lr, \"name\": \"te\"})",
           "groups.append({\"params\": te_params, \"lr\": unet_lr, \"name\": \"te\"})"),
    Mutant("precision_autocast_off", "precision", AUTOCAST, AUTOCAST.replace("self.cfg.precision == \"fp32\"", "True")),
    Mutant("precision_bf16", "precision=bf16", AUTOCAST,
           AUTOCAST.replace("== \"fp32\"", "in (\"fp32\", \"bf16\")")),
    Mutant("precision_fp16", "precision=fp16", AUTOCAST,
           AUTOCAST.replace("== \"fp32\"", "in (\"fp32\", \"fp16\")")),
    Mutant("fp16_loss_scaling", "precision=fp16",
           "self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == \"fp16\" else None",
           "self.scaler = None"),
    Mutant("lora_dropout", "dropout", DROPOUT, DROPOUT.replace("self.dropout:", "False:")),
    Mutant("lora_dropout_wiring", "dropout", "dropout=config.dropout,", "dropout=0.0,"),
    Mutant("rank_dropout", "rank_dropout", "if self.rank_dropout:\n                rank_dim",
           "if False:\n                rank_dim"),
    Mutant("rank_dropout_wiring", "rank_dropout", "rank_dropout=config.rank_dropout,", "rank_dropout=0.0,"),
    Mutant("module_dropout", "module_dropout", "if float(coin) < self.module_dropout:",
           "if float(coin) < self.module_dropout and False:"),
    Mutant("module_dropout_wiring", "module_dropout", "module_dropout=config.module_dropout,",
           "module_dropout=0.0,"),
    Mutant("conv_rank", "conv_rank", "(is_conv and config.conv_rank > 0)", "(is_conv and False)"),
    Mutant("conv_rank_value", "conv_rank", "rank, alpha = ((config.conv_rank, config.conv_alpha) if is_conv",
           "rank, alpha = ((config.rank, config.alpha) if is_conv"),
]


def source_files(root: Path) -> list[Path]:
    out = []
    for entry in SEARCHED:
        path = root / entry
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def locate(root: Path, mutant: Mutant) -> tuple[Path | None, str]:
    """The one file holding the mutant's pattern, or None with the reason (missing, or found more than once)."""
    hits = [(p, p.read_text(encoding="utf-8").count(mutant.old)) for p in source_files(root)]
    hits = [(p, n) for p, n in hits if n]
    if not hits:
        return None, f"pattern not found under {', '.join(SEARCHED)}"
    if len(hits) > 1 or hits[0][1] > 1:
        return None, "pattern found " + ", ".join(f"{n}× in {p.relative_to(root)}" for p, n in hits)
    return hits[0][0], ""


def copy_checkout(target: Path, ref: str = "") -> None:
    """Tracked and untracked-but-not-ignored files of this checkout (no .git, no caches, no venv), or the tree of
    commit `ref` (to measure the suite as it was)."""
    if ref:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref], check=True,
                                 capture_output=True).stdout
        target.mkdir(parents=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / rel)


def test_files(root: Path) -> list[str]:
    names = sorted(p.name for p in (root / "tests" / "core").glob("test_*.py") if p.name not in LEFT_OUT)
    ordered = [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]
    return [f"tests/core/{n}" for n in ordered]


def run_pytest(root: Path, files: list[str], timeout: float) -> tuple[str, str, float]:
    """('passed' | 'failed' | 'timeout', first failing test or '', seconds) for pytest -x over `files` in `root`."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # a restored file must never meet a mutant's .pyc
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest, and leaves the other cores alone
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files],
                              cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", time.perf_counter() - started
    seconds = time.perf_counter() - started
    if proc.returncode == 0:
        return "passed", "", seconds
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    return "failed", failed[0] if failed else f"pytest exit {proc.returncode}: {proc.stdout[-300:]}", seconds


def machine() -> str:
    """CPU model and core count (Linux /proc/cpuinfo), else the platform's own description."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=[], help="mutant names to run (default: all)")
    parser.add_argument("--host", nargs="*", default=[], help="host-tier files to run for core-tier survivors")
    parser.add_argument("--json", default="", help="write the results here as JSON")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run; a timeout kills")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--ref", default="", help="measure the suite of this commit instead of the working tree")
    parser.add_argument("--list", action="store_true", help="list the mutants and whether each pattern is found")
    args = parser.parse_args()
    unknown = sorted(set(args.only) - {m.name for m in MUTANTS})
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(unknown)}; known: {', '.join(m.name for m in MUTANTS)}")
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in mutants:
            path, why = locate(ROOT, m)
            print(f"{m.name:34} {m.option:30} {path.relative_to(ROOT) if path else 'STALE: ' + why}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="atelier_mutants_") as tmp:
        work = Path(tmp) / "atelier"
        copy_checkout(work, args.ref)
        files = test_files(work)
        if not args.no_baseline:
            outcome, first, seconds = run_pytest(work, files, args.timeout)
            print(f"baseline (no mutant): {outcome} in {seconds:.0f} s {first}", flush=True)
            if outcome != "passed":
                print("The unmutated suite does not pass; fix that first, the figure would mean nothing.")
                return 2
        for m in mutants:
            path, why = locate(work, m)
            row = {"name": m.name, "option": m.option}
            if path is None:
                row.update(status="stale", detail=why)
            else:
                original = path.read_text(encoding="utf-8")
                path.write_text(original.replace(m.old, m.new), encoding="utf-8")
                try:
                    outcome, first, seconds = run_pytest(work, files, args.timeout)
                    tier = "core"
                    if outcome == "passed" and args.host:
                        outcome, first, more = run_pytest(work, args.host, args.timeout)
                        tier, seconds = "host", seconds + more
                finally:
                    path.write_text(original, encoding="utf-8")
                row.update(file=str(path.relative_to(work)), seconds=round(seconds, 1),
                           status="survived" if outcome == "passed" else "killed",
                           detail=f"{tier}: {first}" if outcome == "failed" else outcome)
            results.append(row)
            print(f"{row['status']:8} {m.name:34} {row.get('seconds', 0):6.0f} s  {row['detail']}", flush=True)
    killed = [r for r in results if r["status"] == "killed"]
    survived = [r for r in results if r["status"] == "survived"]
    stale = [r for r in results if r["status"] == "stale"]
    options = sorted({r["option"] for r in results})
    print(f"\n{len(results)} mutants over {len(options)} options: {len(killed)} killed, {len(survived)} survived, "
          f"{len(stale)} stale")
    for r in survived:
        print(f"  survivor: {r['name']} ({r['option']})")
    for r in stale:
        print(f"  stale: {r['name']}: {r['detail']}")
    if args.json:
        summary = {"mutants": len(results), "options": len(options), "killed": len(killed),
                   "survived": [r["name"] for r in survived], "stale": [r["name"] for r in stale],
                   "machine": machine(), "python": platform.python_version(),
                   "date": time.strftime("%Y-%m-%d"), "host_files": args.host, "ref": args.ref or "working tree",
                   "results": results}
        Path(args.json).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 1 if survived or stale else 0


if __name__ == "__main__":
    sys.exit(main())
