"""The run around a Trainer: file naming, periodic saves with keep-last, the state folder, metadata and the report's
facts. Nothing here knows ComfyUI: the node, a command-line entry or a distributed worker hand it a Trainer, where
files go, how to build the shipped file's metadata and how messages should name files.

Naming follows kohya: the final file is `<name>.safetensors`, epoch saves `<name>-000002.safetensors`, step saves
`<name>-step00000100.safetensors`, so step and epoch saves never overwrite each other. Pruning deletes files, so it
never builds a glob or a pattern from the run's name: it lists the folder and compares names exactly, and touches
only regular files of this run's two intermediate kinds.
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..core.lora_io import save_lora
from ..core.temps import remove_stale_temps
from .checkpoint import load_state, resume_warnings, save_state
from .loop import Trainer, TrainingDiverged, TrainState

EPOCH_DIGITS, STEP_DIGITS = 6, 8  # kohya's widths: name-000002, name-step00000100


def epoch_file(path: Path, epoch: int) -> Path:
    """kohya's naming for epoch saves: name-000002.safetensors."""
    return path.with_name(f"{path.stem}-{epoch:0{EPOCH_DIGITS}d}{path.suffix}")


def step_file(path: Path, step: int) -> Path:
    """kohya's naming for step saves: name-step00000100.safetensors."""
    return path.with_name(f"{path.stem}-step{step:0{STEP_DIGITS}d}{path.suffix}")


def intermediate_kind(name: str, path: Path) -> str | None:
    """"epoch" or "step" when `name` is one of this run's intermediate files, else None (exact comparison)."""
    prefix, suffix = f"{path.stem}-", path.suffix
    if not (name.startswith(prefix) and name.endswith(suffix)) or len(name) <= len(prefix) + len(suffix):
        return None
    middle = name[len(prefix):len(name) - len(suffix)]
    if len(middle) == EPOCH_DIGITS and middle.isascii() and middle.isdigit():
        return "epoch"
    digits = middle[len("step"):]
    if middle.startswith("step") and len(digits) == STEP_DIGITS and digits.isascii() and digits.isdigit():
        return "step"
    return None


def is_run_file_name(name: str, path: Path) -> bool:
    """Whether `name` is this run's final file or one of its epoch or step files."""
    return name == path.name or intermediate_kind(name, path) is not None


def prune_epoch_files(path: Path, keep_last: int) -> None:
    """Deletes all but the newest `keep_last` intermediate files of each kind (epoch saves, step saves) of this run;
    regular files only, matched by exact name comparison."""
    if keep_last <= 0:
        return
    kinds: dict[str, list[str]] = {"epoch": [], "step": []}
    for entry in os.scandir(path.parent):
        kind = intermediate_kind(entry.name, path)
        if kind and entry.is_file(follow_symlinks=False):
            kinds[kind].append(entry.name)
    for names in kinds.values():
        for old in sorted(names)[:-keep_last]:
            os.unlink(path.parent / old)


@dataclass(frozen=True)
class RunLoras:
    """The LoRA files one run wrote, by their names in the loras list: the final file and every intermediate file
    still on disk (keep-last may have pruned some), in the order they were saved."""

    final: str  # e.g. "atelier/my_lora.safetensors"
    intermediates: tuple[tuple[str, str, int], ...] = ()  # (name, "epoch" or "step", its epoch or step number)

    def names(self) -> list[str]:
        """Every file of the run, intermediates first, the final file last."""
        return [name for name, _, _ in self.intermediates] + [self.final]

    def kinds(self) -> list[str]:
        """"epoch", "step" or "final" per name of names()."""
        return [kind for _, kind, _ in self.intermediates] + ["final"]


def run_loras(saved: list[Path], final: Path, folder: str) -> RunLoras:
    """RunLoras from a RunResult's saved paths; `folder` is the files' sub-folder in the loras list ("atelier"), so
    names read "atelier/<file>" on every platform."""
    intermediates = []
    for path in saved:
        path = Path(path)
        kind = intermediate_kind(path.name, final)
        if kind is None or not path.is_file():  # the final file, or an intermediate pruned by keep_last
            continue
        number = int(path.stem[len(final.stem) + 1:].removeprefix("step"))  # name-000002 / name-step00000100
        intermediates.append((f"{folder}/{path.name}", kind, number))
    return RunLoras(f"{folder}/{final.name}", tuple(intermediates))


@dataclass(frozen=True)
class RunFiles:
    """Where a run's files go and how messages name them (the host decides both)."""

    final: Path  # <lora folder>/<name>.safetensors
    state_dir: Path  # <state root>/<name>
    keep_last: int = 0  # intermediate files of each kind to keep; 0 = all
    shown: Callable[[Path], str] = lambda p: Path(p).name  # never an absolute server path in a message


@dataclass
class RunResult:
    state: TrainState
    shipped: dict[str, torch.Tensor]  # the final file's tensors
    saved: list[Path] = field(default_factory=list)  # every file written, in order
    state_dir: Path | None = None
    train_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    stopped: bool = False  # a stop request ended the run before its last step (everything was saved)


class TrainingRun:
    """Drives one Trainer to the end: resume, periodic and final saves with keep-last, the state folder."""

    def __init__(self, trainer: Trainer, files: RunFiles, metadata: Callable[[int, int], dict[str, str]],
                 environment: dict | None = None, export_dtype: torch.dtype | None = torch.float16,
                 state_extra: dict | None = None,
                 write: Callable[[Path, dict[str, torch.Tensor], dict[str, str]], None] | None = None):
        self.trainer, self.files, self.metadata = trainer, files, metadata
        # how a shipped file is written: a LoRA by default; a full fine-tune's host writes a whole checkpoint
        self.write_file = write or save_lora
        self.environment, self.export_dtype = environment or {}, export_dtype
        self.state_extra = state_extra or {}  # recorded in state.json (e.g. the run's identity, for reuse)
        self.saved: list[Path] = []
        self.state = TrainState()
        trainer.callbacks.on_checkpoint = self.checkpoint

    def shipped(self) -> dict[str, torch.Tensor]:
        """The tensors to write: the EMA average when EMA is on (that is its purpose), else the weights as trained."""
        t = self.trainer
        if t.ema is None:
            return t.network.export(self.export_dtype)
        with t.ema.swapped(t.params):
            return t.network.export(self.export_dtype)

    def _write(self, target: Path, step: int, epoch: int) -> None:
        self.write_file(target, self.shipped(), self.metadata(step, epoch))
        self.saved.append(target)

    @property
    def _writer(self) -> bool:
        """Whether this process writes files: always, except ranks other than 0 under torchrun."""
        return getattr(self.trainer, "distributed", None) is None or self.trainer.distributed.is_writer

    def _barrier(self) -> None:
        """Under torchrun, every rank waits here until rank 0 has finished writing."""
        if getattr(self.trainer, "distributed", None) is not None:
            self.trainer.distributed.barrier()

    def checkpoint(self, step: int, epoch: int, by: str) -> None:
        """An intermediate save ("epoch" or "step"): the file, the resume state, then keep-last pruning."""
        if self._writer:
            target = epoch_file(self.files.final, epoch) if by == "epoch" else step_file(self.files.final, step)
            self._write(target, step, finished_epoch(self.state))  # a step save mid-epoch is in the running epoch
            save_state(self.files.state_dir, self.trainer, self.state, self.state_extra, self.environment)
            prune_epoch_files(self.files.final, self.files.keep_last)
        self._barrier()

    def train(self, resume_dir: Path | None = None, contexts: list[AbstractContextManager] = ()) -> RunResult:
        """Resumes (when given a state), trains inside `contexts`, saves the final file and state; a stop request
        returns with stopped=True after saving, a divergence raises naming the newest saved file."""
        t = self.trainer
        if self._writer:
            remove_stale_temps(self.files.final.parent, lambda name: is_run_file_name(name, self.files.final))
        with torch.no_grad():
            t.precompute_text()  # a frozen text encoder: every caption encoded once, as data preparation
        warnings = resume_warnings(resume_dir, self.environment) if resume_dir is not None else []
        self.state = load_state(resume_dir, t) if resume_dir is not None else TrainState()
        started = time.perf_counter()
        try:
            with ExitStack() as stack:
                for context in contexts:
                    stack.enter_context(context)
                state = t.run(self.state)
        except TrainingDiverged as e:  # nothing of the failing step was applied or saved
            where = f" The last saved file is {self.files.shown(self.saved[-1])}." if self.saved else ""
            raise TrainingDiverged(f"{e}{where}") from None
        seconds = time.perf_counter() - started
        state_dir = self.files.state_dir
        if self._writer:
            self._write(self.files.final, state.step, finished_epoch(state))
            save_state(state_dir, t, state, self.state_extra, self.environment)
        self._barrier()
        return RunResult(state, self.shipped(), list(self.saved), state_dir, seconds,
                         warnings + skipped_steps_warning(state.skipped_steps, state.step),
                         stopped=state.step < t.total_steps)

    def stopped_message(self, result: RunResult, resume_hint: str) -> str:
        """What a stopped run kept and how to continue it (`resume_hint` says how, in the host's words)."""
        return (f"Training stopped at step {result.state.step} of {self.trainer.total_steps} because it was "
                f"cancelled. The file so far is saved as {self.files.shown(self.files.final)} and the resume state "
                f"as {self.files.shown(result.state_dir)}; to continue, {resume_hint}.")


def finished_epoch(state: TrainState) -> int:
    """The epoch a file was saved in, as kohya counts it: completed epochs, or the running one when partway."""
    return state.epoch + (1 if state.batch_in_epoch else 0)


def skipped_steps_warning(skipped: list[int], steps: int) -> list[str]:
    """A sentence for the report when the fp16 loss scaler skipped steps (nothing is applied on such a step)."""
    if not skipped:
        return []
    listed = ", ".join(map(str, skipped[:10])) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
    return [f"{len(skipped)} of {steps} steps were skipped by the fp16 loss scaler (inf/nan gradients; nothing was "
            f"applied on steps {listed}). A few at the start are normal while it finds its scale; many mean the "
            "run learned less than its step count says: use bf16, or lower the learning rate."]
