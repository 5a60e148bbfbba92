"""Trains an exported job on the tiny test model; the core tests call it in-process and under torchrun.

Usage (what tests/core/test_job.py launches): python -m torch.distributed.run --nproc-per-node 2
tests/job_worker.py JOB OUT. The model comes from tests/tiny_models.py, never from a path in production code.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import conftest  # noqa: E402,F401  registers this checkout as the package `atelier`
from tiny_models import TinyTextEncoder, TinyUNet  # noqa: E402

from atelier.trainers import objectives as ob  # noqa: E402
from atelier.trainers.distributed import from_environment, leave  # noqa: E402
from atelier.trainers.job import JobModel, run_job  # noqa: E402


def tiny_job_model(nan: bool = False) -> JobModel:
    """The tiny UNet as a JobModel, wired like the Rig of the trainer tests; `nan` makes every prediction NaN."""
    unet, ms = TinyUNet(), ob.DiscreteEps()

    def denoise(x_t, s, c, **e):
        out = unet(ms.calculate_input(s, x_t), ms.timestep(s), c)
        return out * float("nan") if nan else out
    return JobModel({"lora_unet": unet}, denoise, ms)


def tiny_encode(captions):
    """The tiny text encoder's embeddings (the export side freezes them into the job)."""
    return TinyTextEncoder()(captions), {}


if __name__ == "__main__":
    job, out = Path(sys.argv[1]), Path(sys.argv[2])
    distributed = from_environment("cpu")
    try:
        nan = f"--nan-on-rank={distributed.rank if distributed else 0}" in sys.argv  # one rank diverges
        run_job(job, tiny_job_model(nan), out=out, resume="--resume" in sys.argv, distributed=distributed)
    finally:
        leave()
