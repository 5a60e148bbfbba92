"""Run inside ComfyUI's Python: checks trainers.objectives against ComfyUI's own model_sampling classes.

Prints one JSON line with the largest error of each check; the host test asserts on it.
usage: python objectives_parity.py /path/to/atelier/checkout   (cwd = the ComfyUI checkout)
"""

import json
import os
import sys

sys.path.insert(0, os.getcwd())
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import torch  # noqa: E402
import comfy.model_sampling as cms  # noqa: E402

sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
import conftest  # noqa: E402,F401  registers the Atelier checkout as the package `atelier` (as the test suite does)
from atelier.trainers import objectives as ob  # noqa: E402


def sampling(kind, base):
    class M(base, kind):
        pass
    return M()


g = torch.Generator().manual_seed(0)
x0, noise = torch.randn(3, 4, 6, 6, generator=g), torch.randn(3, 4, 6, 6, generator=g)
out = {}
for name, ms, expected in (
    ("eps", sampling(cms.EPS, cms.ModelSamplingDiscrete), lambda s: noise),
    ("v", sampling(cms.V_PREDICTION, cms.ModelSamplingDiscrete),
     lambda s: (noise - s * x0) / (1 + s ** 2) ** 0.5),
    ("flow", sampling(cms.CONST, cms.ModelSamplingDiscreteFlow), lambda s: noise - x0),
):
    sigma = ob.sample_sigmas(ms, [torch.Generator().manual_seed(i) for i in range(3)])
    x_t = ms.noise_scaling(sigma, noise, x0)
    target = ob.prediction_target(ms, sigma, x_t, x0)
    out[name] = float((target - expected(sigma.view(3, 1, 1, 1))).abs().max())
    # our reference samplings agree with ComfyUI's on sigmas and denoising
    ref = {"eps": ob.DiscreteEps(), "v": ob.DiscreteV(), "flow": ob.RectifiedFlow()}[name]
    out[name + "_sigma"] = abs(ref.percent_to_sigma(0.3) - ms.percent_to_sigma(0.3))
    out[name + "_denoised"] = float((ref.calculate_denoised(sigma, noise, x_t)
                                     - ms.calculate_denoised(sigma, noise, x_t)).abs().max())
print(json.dumps(out))
