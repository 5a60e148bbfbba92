"""LoRA arithmetic on kohya-format tensors: exact merges, exact rank reduction, extraction, baking in.

Nothing here knows ComfyUI. The format (key names, the module record LoraModule, ΔW, the shape-fit rule) is
core/lora_format.py; "strength" here is LoraLoader's strength: ΔW = s · (alpha / r) · up @ down.

What is exact and what is not:
- merge_concat is exact: stacking the factors of several LoRAs gives a LoRA whose ΔW is the strength-weighted sum.
- reduce_rank / resize / merge_svd never build ΔW: a QR of each factor and an SVD of the small r×r core give the
  optimal (Eckart–Young) rank-k approximation of ΔW; keeping every singular value is lossless.
- merge_average_weights averages the factors, which is only an approximation of averaging ΔW (see its docstring).
- extract_module approximates a weight difference by a low-rank product (randomized or full SVD).
All maths runs in float32 (the small cores in float64); inputs are never modified.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import torch
from torch import Tensor

from .lora_format import ALPHA, DOWN, GENERIC_TE_PREFIX, UP, LoraModule, shapes_fit
from .lora_io import non_finite_count
from .report import listing

DYNAMIC_METHODS = (None, "sv_ratio", "sv_fro", "sv_cumulative")
EXTRACT_METHODS = ("randomized", "full")
STRENGTH_LIMIT = 10.0  # |strength| a node accepts (the schemas' range too): more is a typo, not a style
BLOCK_WEIGHT_LIMIT = 10.0  # |block weight| accepted, as for strengths


def check_finite(sd) -> None:
    """Raises ValueError naming the first key holding NaN or inf (tensors dict or LoraModule dict)."""
    for key, value in sd.items():
        parts = [(key + DOWN, value.down), (key + UP, value.up)] if isinstance(value, LoraModule) else [(key, value)]
        for name, t in parts:
            bad = non_finite_count(t) if isinstance(t, Tensor) else 0
            if bad:
                raise ValueError(f"'{name}' holds {bad} NaN/inf values out of {t.numel()}: the LoRA is broken "
                                 "(diverged training or a damaged file); use an earlier epoch or re-train.")
        if isinstance(value, LoraModule) and not math.isfinite(value.alpha):
            raise ValueError(f"'{key}{ALPHA}' is {value.alpha}: the LoRA is broken; re-save it with a finite alpha.")


def _as_conv(m: LoraModule) -> LoraModule:
    """A linear module as the equivalent 1x1 conv module (same ΔW, 4-D)."""
    return m if m.is_conv else LoraModule(m.down[:, :, None, None], m.up[:, :, None, None], m.alpha)


def _architecture_check(loras: list[tuple[dict[str, LoraModule], float]]) -> None:
    """ValueError listing bases whose (out, in) or conv kernel differ between the LoRAs."""
    seen: dict[str, tuple[int, tuple[int, ...]]] = {}
    wrong, kernels = [], []
    for i, (mods, _) in enumerate(loras, 1):
        for base, m in mods.items():
            if base not in seen:
                seen[base] = (i, m.shape)
                continue
            j, first = seen[base]
            if first[:2] != m.shape[:2]:
                wrong.append(f"'{base}' is {first} in LoRA {j} but {m.shape} in LoRA {i}")
            elif first[2:] != m.shape[2:] and not ({first[2:], m.shape[2:]} <= {(), (1, 1)}):
                kernels.append(f"'{base}' has kernel {first[2:] or 'linear'} in LoRA {j} but "
                               f"{m.shape[2:] or 'linear'} in LoRA {i}")
    if wrong:
        raise ValueError(f"LoRAs for different architectures: {listing(wrong)}. Merge only LoRAs trained on the "
                         "same base model family.")
    if kernels:
        raise ValueError(f"Conv modules with different kernel sizes cannot be merged: {listing(kernels)}. Merge "
                         "LoRAs made with the same conv settings.")


def merge_concat(loras: list[tuple[dict[str, LoraModule], float]]) -> dict[str, LoraModule]:
    """Exact merge by stacking factors: the result's ΔW at strength 1 is Σ s_i ΔW_i, its rank the sum of ranks.

    For each base, up_cat = [up_i · s_i·alpha_i/r_i ...] (columns) and down_cat = [down_i ...] (rows), alpha = total
    rank (scale 1), so each strength applies once. A module present in only some LoRAs is kept as is (scaled).
    LoRAs at strength 0 contribute nothing and are left out rather than adding rank. A linear part and a 1x1 conv
    part of the same base are merged as 1x1 conv (same ΔW); other kernel mismatches and different (out, in) raise.
    """
    if not loras:
        raise ValueError("merge_concat needs at least one (modules, strength) pair; got none.")
    _architecture_check(loras)
    parts: dict[str, list[tuple[LoraModule, float]]] = {}
    for mods, strength in loras:
        if float(strength) == 0.0:
            continue
        for base, m in mods.items():
            parts.setdefault(base, []).append((m, float(strength)))
    merged = {}
    for base, group in parts.items():
        if any(m.is_conv for m, _ in group):
            group = [(_as_conv(m), s) for m, s in group]  # only 1x1 convs can meet linear parts (checked above)
        up = torch.cat([m.up.to(torch.float32) * (s * m.alpha / m.rank) for m, s in group], dim=1)  # (out, Σr[,1,1])
        down = torch.cat([m.down.to(torch.float32) for m, _ in group], dim=0)  # (Σr, in[, kh, kw])
        merged[base] = LoraModule(down=down, up=up, alpha=float(down.shape[0]))
    return merged


def merge_average_weights(loras: list[tuple[dict[str, LoraModule], float]]) -> dict[str, LoraModule]:
    """Weighted average of the up and down factors of same-shape LoRAs ("epoch soup"); weights are normalised to 1.

    This is not the average of ΔW: Σ w_i up_i · Σ w_j down_j has cross terms up_i down_j, so it equals Σ w_i ΔW_i
    only when the downs are equal (up to the averaging). People use it on checkpoints of one training run, whose
    factors stay close and share a basis, to smooth out the noise of individual epochs while keeping the rank.
    Alpha is the first LoRA's; an up whose alpha differs is rescaled by alpha_i / alpha_1 first, so every part keeps
    its own scale (with equal alphas, as in epochs of one run, this changes nothing). The key sets and every shape
    must match.
    """
    if not loras:
        raise ValueError("merge_average_weights needs at least one (modules, weight) pair; got none.")
    total = sum(float(w) for _, w in loras)
    if total == 0.0:
        raise ValueError(f"The averaging weights {[float(w) for _, w in loras]} sum to 0; give weights with a "
                         "non-zero sum (they are normalised to sum 1).")
    first = loras[0][0]
    diffs = []
    for i, (mods, _) in enumerate(loras[1:], 2):
        missing, extra = sorted(set(first) - set(mods)), sorted(set(mods) - set(first))
        diffs += [f"'{b}' only in LoRA 1, not in LoRA {i}" for b in missing]
        diffs += [f"'{b}' in LoRA {i} but not in LoRA 1" for b in extra]
        for b in first.keys() & mods.keys():
            a, m = first[b], mods[b]
            if a.down.shape != m.down.shape or a.up.shape != m.up.shape:
                diffs.append(f"'{b}' is down {tuple(a.down.shape)} / up {tuple(a.up.shape)} in LoRA 1 but down "
                             f"{tuple(m.down.shape)} / up {tuple(m.up.shape)} in LoRA {i}")
    if diffs:
        raise ValueError(f"Weight averaging needs LoRAs with identical modules and shapes (epochs of one run): "
                         f"{listing(diffs)}. Use the concat or svd merge for different LoRAs.")
    out = {}
    for base, a in first.items():
        up = sum((float(w) / total) * (mods[base].alpha / a.alpha if a.alpha else 1.0) * mods[base].up.to(torch.float32)
                 for mods, w in loras)
        down = sum((float(w) / total) * mods[base].down.to(torch.float32) for mods, w in loras)
        out[base] = LoraModule(down=down, up=up, alpha=a.alpha)
    return out


def _check_rank_args(rank, dynamic, dynamic_param, max_rank) -> None:
    if dynamic not in DYNAMIC_METHODS:
        raise ValueError(f"Unknown dynamic method '{dynamic}'; expected one of {DYNAMIC_METHODS}.")
    if dynamic is None and rank is None:
        raise ValueError("Give a target rank or a dynamic method (sv_ratio, sv_fro, sv_cumulative); got neither.")
    for name, value in (("rank", rank), ("max_rank", max_rank)):
        if value is not None and (int(value) != value or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1; got {value}.")
    if dynamic == "sv_ratio" and not dynamic_param >= 1.0:
        raise ValueError(f"sv_ratio keeps σ >= σ_max / param, so param must be >= 1 (e.g. 20); got {dynamic_param}.")
    if dynamic in ("sv_fro", "sv_cumulative") and not 0.0 < dynamic_param <= 1.0:
        raise ValueError(f"{dynamic} keeps a fraction of the spectrum: param must be in (0, 1] (e.g. 0.9); got "
                         f"{dynamic_param}.")


def _choose_rank(s: Tensor, rank, dynamic, param, max_rank, total_sq: float | None = None) -> int:
    """How many of the descending singular values `s` to keep: fixed `rank`, or the dynamic rule (capped by ranks).

    total_sq: ||M||_F² when `s` holds only the leading singular values (randomized SVD), so sv_fro measures the
    fraction of the whole matrix; otherwise Σ s².
    """
    s = s.to(torch.float64)
    n = int(s.numel())
    if dynamic is None:
        k = int(rank)
    elif float(s[0]) == 0.0:
        k = 1
    elif dynamic == "sv_ratio":
        k = int((s >= s[0] / param).sum())
    elif dynamic == "sv_fro":
        cum = torch.cumsum(s * s, 0)
        total = float(cum[-1]) if total_sq is None else max(total_sq, float(cum[-1]))
        k = int((cum < param * param * total).sum()) + 1  # smallest k with sqrt(Σ_{i<k} σ²) >= param·||M||_F
    else:  # sv_cumulative
        cum = torch.cumsum(s, 0)
        k = int((cum < param * cum[-1]).sum()) + 1  # smallest k with Σ_{i<k} σ >= param · Σ σ
    if dynamic is not None:
        k = min(k, rank if rank is not None else k, max_rank if max_rank is not None else k)
    return max(1, min(k, n))


def _energy(s: Tensor, k: int, total_sq: float | None = None) -> float:
    """Σ_{i<k} σ_i² / total (total = Σ σ² unless given); 1.0 for a zero matrix."""
    sq = s.to(torch.float64) ** 2
    total = float(sq.sum()) if total_sq is None else total_sq
    return 1.0 if total == 0.0 else min(1.0, float(sq[:k].sum()) / total)


def reduce_rank(module: LoraModule, rank: int | None = None, *, dynamic: str | None = None,
                dynamic_param: float = 0.0, max_rank: int | None = None) -> tuple[LoraModule, dict]:
    """Optimal rank-k re-factorisation of a module without building ΔW (QR of both factors, SVD of the r×r core).

    ΔW = c·U·D with U = Q_u R_u and Dᵀ = Q_d R_d gives ΔW = Q_u (c R_u R_dᵀ) Q_dᵀ; the SVD P S Vᵀ of the small core
    gives ΔW's SVD (Q_u P) S (Q_d V)ᵀ, truncated to k: up' = Q_u P_k √S_k, down' = √S_k V_kᵀ Q_dᵀ, alpha' = k (scale
    1), so delta(1) keeps the module's effective strength. Cost O((out + in)·r²), memory O((out + in)·r).
    rank: fixed target (>= the module's rank keeps every singular value: lossless). dynamic: "sv_ratio" keeps
    σ_i >= σ_max / param; "sv_fro" the smallest k with sqrt(Σ_{i<k} σ_i²) >= param·||ΔW||_F; "sv_cumulative" the
    smallest k with Σ_{i<k} σ_i >= param·Σ σ_i; with a dynamic method, rank and max_rank are upper limits (as in
    kohya's resize_lora). At least 1 is kept. Report: {"rank": k, "energy": Σ_kept σ² / Σ σ², "sigma_max"}.
    """
    _check_rank_args(rank, dynamic, dynamic_param, max_rank)
    r = module.rank
    up = module.up.reshape(module.up.shape[0], r).to(torch.float32)  # (out, r)
    down = module.down.reshape(r, -1).to(torch.float32)  # (r, n), n = in·kh·kw
    q_u, r_u = torch.linalg.qr(up)  # (out, p), (p, r), p = min(out, r)
    q_d, r_d = torch.linalg.qr(down.T)  # (n, q), (q, r), q = min(n, r)
    core = (r_u.double() @ r_d.double().T) * module.scale  # (p, q); float64: it is tiny
    p_mat, s, vh = torch.linalg.svd(core, full_matrices=False)  # (p, t), (t,), (t, q)
    k = _choose_rank(s, rank, dynamic, dynamic_param, max_rank)
    root = s[:k].sqrt()
    new_up = q_u @ (p_mat[:, :k] * root).to(torch.float32)  # (out, k)
    new_down = (root[:, None] * vh[:k]).to(torch.float32) @ q_d.T  # (k, n)
    if module.is_conv:
        new_up = new_up.reshape(new_up.shape[0], k, 1, 1)
        new_down = new_down.reshape(k, *module.down.shape[1:])
    report = {"rank": k, "energy": _energy(s, k), "sigma_max": float(s[0]) if s.numel() else 0.0}
    return LoraModule(down=new_down, up=new_up, alpha=float(k)), report


def resize(modules: dict[str, LoraModule], rank: int | None = None, *,
           on_layer: Callable[[int, int], None] | None = None,
           **dynamic) -> tuple[dict[str, LoraModule], dict[str, dict]]:
    """reduce_rank on every module: (new modules, per-module report). on_layer(done, total) runs before each module
    and after the last (a host checks Cancel there)."""
    out, report = {}, {}
    for done, (base, m) in enumerate(modules.items()):
        if on_layer is not None:
            on_layer(done, len(modules))
        out[base], report[base] = reduce_rank(m, rank, **dynamic)
    if on_layer is not None:
        on_layer(len(modules), len(modules))
    return out, report


def merge_svd(loras: list[tuple[dict[str, LoraModule], float]], rank: int, *,
              on_layer: Callable[[int, int], None] | None = None,
              **dynamic) -> tuple[dict[str, LoraModule], dict[str, dict]]:
    """Exact concat merge, then each module re-factorised to `rank` (or a dynamic rank) by reduce_rank."""
    return resize(merge_concat(loras), rank, on_layer=on_layer, **dynamic)


def _lu_normalise(y: Tensor) -> Tensor:
    """P·L of a pivoted LU factorisation of y (m, l): a well-conditioned basis of the same column space."""
    lu, pivots = torch.linalg.lu_factor(y)  # y[perm] = L U; L (m, l) unit lower trapezoidal
    m, l = y.shape
    low = torch.tril(lu, -1)
    low.diagonal().fill_(1.0)
    perm = list(range(m))
    for i, p in enumerate(pivots.tolist()):  # LAPACK's sequential row swaps (1-based)
        perm[i], perm[p - 1] = perm[p - 1], perm[i]
    inverse = torch.empty(m, dtype=torch.long)
    inverse[torch.tensor(perm)] = torch.arange(m)
    return low[inverse]  # P·L without building the m×m permutation matrix


def randomized_svd(matrix: Tensor, rank: int, *, oversample: int = 10, n_iter: int = 2,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Leading `rank` singular triplets, matrix ≈ U diag(S) Vᵀ, by randomized SVD (Halko, Martinsson & Tropp, 2011).

    A Gaussian test matrix (from `generator`, or a local one seeded 0) sketches the range of the matrix; `n_iter`
    power iterations, each re-orthonormalised by QR, sharpen it for slowly decaying spectra; the SVD of the small
    projection Qᵀ·matrix gives the triplets. Returns U (m, k), S (k,), V (n, k), k = min(rank, m, n), float32.
    """
    if matrix.ndim != 2:
        raise ValueError(f"randomized_svd needs a 2-D matrix; got shape {tuple(matrix.shape)}.")
    if rank < 1:
        raise ValueError(f"randomized_svd needs rank >= 1; got {rank}.")
    a = matrix.to(torch.float32)  # (m, n)
    m, n = a.shape
    k = min(int(rank), m, n)
    width = min(k + int(oversample), m, n)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    omega = torch.randn(n, width, generator=gen, device=gen.device).to(a.device)  # (n, l)
    y = a @ omega  # (m, l): a sketch of the range
    for _ in range(int(n_iter)):
        # Intermediate power-iteration steps are re-normalised with a pivoted LU (about half the work of QR, as in
        # Halko et al. §4.5 and scikit-learn), which keeps small singular directions from vanishing in float32;
        # only the final basis needs to be orthonormal.
        z = _lu_normalise(a.T @ y)  # (n, l)
        y = _lu_normalise(a @ z)  # (m, l)
    q, _ = torch.linalg.qr(y)  # (m, l): orthonormal basis of the sketched range
    u_small, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)  # (l, l), (l,), (l, n)
    return q @ u_small[:, :k], s[:k], vh[:k].T


def _quantile_abs(values: Tensor, q: float) -> float:
    """The q-quantile of |values| (linear interpolation), without torch.quantile's input-size limit."""
    v = values.abs().flatten().sort().values
    pos = q * (v.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, v.numel() - 1)
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def extract_module(diff: Tensor, rank: int | None = None, *, dynamic: str | None = None, dynamic_param: float = 0.0,
                   max_rank: int = 128, method: str = "randomized", clamp_quantile: float | None = None,
                   generator: torch.Generator | None = None) -> tuple[LoraModule | None, dict]:
    """A LoRA module approximating a weight difference by truncated SVD (randomized, Halko et al. 2011, or full).

    diff: tuned − base weight, (out, in) or conv (out, in, kh, kw), flattened to (out, in·kh·kw). method "full" is
    torch.linalg.svd of the whole matrix (the kohya / ComfyUI way, the reference); "randomized" computes only the
    leading singular values. Fixed `rank`, or a dynamic method as in reduce_rank chosen among the leading max_rank
    singular values (sv_fro measures against the whole ||diff||_F; sv_cumulative against the values computed, which
    for "randomized" are the leading max_rank only); max_rank bounds dynamic choices only. The factors share √σ
    (up = U√S, down = √S Vᵀ), alpha = rank (scale 1).
    clamp_quantile (off by default): clamps both factors' values to ±(that quantile of their |values|), trimming
    outliers at the cost of accuracy; ComfyUI's extractor always does this at 0.99 (on U·S and Vᵀ).
    Report: {"rank", "energy": kept fraction of ||diff||_F², "error": ||diff − ΔW||_F / ||diff||_F}.
    All-zero diff -> (None, {"rank": 0, "energy": 1.0, "error": 0.0}).
    """
    if method not in EXTRACT_METHODS:
        raise ValueError(f"Unknown extraction method '{method}'; expected one of {EXTRACT_METHODS}.")
    if diff.ndim not in (2, 4):
        raise ValueError(f"Extraction needs a 2-D (linear) or 4-D (conv) weight difference; got shape "
                         f"{tuple(diff.shape)}.")
    if clamp_quantile is not None and not 0.0 < clamp_quantile <= 1.0:
        raise ValueError(f"clamp_quantile must be in (0, 1] or None (off); got {clamp_quantile}.")
    _check_rank_args(rank, dynamic, dynamic_param, max_rank)
    mat = diff.reshape(diff.shape[0], -1).to(torch.float32)  # (out, n)
    total_sq = float(torch.linalg.vector_norm(mat)) ** 2  # float32 norm: a float64 cast would copy the matrix
    if total_sq == 0.0:
        return None, {"rank": 0, "energy": 1.0, "error": 0.0}
    want = int(rank) if dynamic is None else min(int(max_rank), int(rank) if rank is not None else int(max_rank))
    want = min(want, *mat.shape)
    if method == "full":
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)  # (out, t), (t,), (t, n)
        v = vh.T
    else:
        u, s, v = randomized_svd(mat, want, generator=generator)  # (out, w), (w,), (n, w)
    if dynamic is None:
        k = min(want, int(s.numel()))
    else:
        k = _choose_rank(s, rank, dynamic, dynamic_param, max_rank, total_sq=total_sq)
    root = s[:k].sqrt()
    up = u[:, :k] * root  # (out, k)
    down = (v[:, :k] * root).T  # (k, n)
    if clamp_quantile is not None:
        hi = _quantile_abs(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    error = None
    if clamp_quantile is None:
        # U, V orthonormal and S the projection's singular values: ||D − U_k S_k V_kᵀ||² = ||D||² − Σ_{i<k} σ_i²
        # exactly (the residual is orthogonal to the kept part), so the error costs no m×n product. Below 1 % the
        # subtraction loses float32 precision, so near-exact layers are measured directly instead.
        kept = float(s[:k].double().pow(2).sum())
        error = math.sqrt(max(total_sq - kept, 0.0) / total_sq)
        error = error if error >= 1e-2 else None
    if error is None:
        error = float(torch.linalg.vector_norm(mat - up @ down, dtype=torch.float64)) / math.sqrt(total_sq)
    report = {"rank": k, "energy": _energy(s, k, total_sq), "error": error}
    if diff.ndim == 4:
        up = up.reshape(up.shape[0], k, 1, 1)
        down = down.reshape(k, *diff.shape[1:])
    return LoraModule(down=down.contiguous(), up=up.contiguous(), alpha=float(k)), report


def extract(tuned: dict[str, Tensor], base: dict[str, Tensor], names: dict[str, str], *, rank: int | None = None,
            min_diff: float = 0.0, on_layer: Callable[[int, int], None] | None = None,
            **kw) -> tuple[dict[str, LoraModule], dict[str, dict], list[str]]:
    """extract_module for every mapped weight (names: weight key -> kohya base): (modules, report, skipped keys).

    A layer whose largest change max|tuned − base| is at most min_diff is skipped (listed), so unchanged layers
    (diff exactly 0 with the default 0.0) give no module. kw goes to extract_module (dynamic, dynamic_param,
    max_rank, method, clamp_quantile, generator); without a generator one local generator seeded 0 serves all
    layers, so a run is reproducible. on_layer(done, total) runs before each layer and after the last one: the
    host's progress and cancel check (raising there stops the extraction, nothing is returned).
    """
    kw = dict(kw)
    if kw.get("generator") is None:
        kw["generator"] = torch.Generator().manual_seed(0)
    modules, report, skipped = {}, {}, []
    for done, (key, lora_name) in enumerate(names.items()):
        if on_layer is not None:
            on_layer(done, len(names))
        missing = [side for side, sd in (("tuned", tuned), ("base", base)) if key not in sd]
        if missing:
            raise ValueError(f"Weight '{key}' is not in the {' and '.join(missing)} model; the name map and the "
                             "models do not match.")
        t, b = tuned[key], base[key]
        if t.shape != b.shape:
            raise ValueError(f"Weight '{key}' is {tuple(t.shape)} in the tuned model but {tuple(b.shape)} in the "
                             "base model: they are different architectures; extract against the model it was tuned "
                             "from.")
        if t.ndim not in (2, 4):
            raise ValueError(f"Weight '{key}' has shape {tuple(t.shape)}; only 2-D (linear) and 4-D (conv) weights "
                             "can be extracted as LoRA. Leave it out of the name map.")
        diff = t.to(torch.float32) - b.to(torch.float32)
        if float(diff.abs().max()) <= min_diff:
            skipped.append(key)
            continue
        module, rep = extract_module(diff, rank, **kw)
        if module is None:
            skipped.append(key)
            continue
        modules[lora_name], report[lora_name] = module, rep
    if on_layer is not None:
        on_layer(len(names), len(names))
    return modules, report, skipped


def apply_to_weights(weights: dict[str, Tensor], modules: dict[str, LoraModule], names: dict[str, str],
                     strength: float = 1.0) -> dict[str, Tensor]:
    """A new weights dict with W + strength·ΔW for every mapped key (names: weight key -> kohya base), in W's dtype.

    Weights without a module are passed through (the same tensors, untouched); a module that no weight maps to
    raises, since it would be silently lost (a LoRA for another model). ΔW must fit W (lora_format.shapes_fit: equal,
    or linear vs 1x1 conv, the one reshape ComfyUI makes).
    """
    targeted = {b for k, b in names.items() if k in weights}
    unmapped = [b for b in modules if b not in targeted]
    if unmapped:
        raise ValueError(f"{len(unmapped)} LoRA modules have no weight in this model: {listing(unmapped)}. The LoRA "
                         "is for another model (or the name map is incomplete).")
    out = dict(weights)
    for key, lora_name in names.items():
        if lora_name not in modules or key not in weights:
            continue
        w, m = weights[key], modules[lora_name]
        if not shapes_fit(m.shape, w.shape):
            raise ValueError(f"LoRA module '{lora_name}' changes a {m.shape} weight but '{key}' is "
                             f"{tuple(w.shape)}; the LoRA is for another model.")
        delta = m.delta(strength).to(w.device).reshape(w.shape)  # a linear ΔW on a 1x1 conv: the one reshape
        out[key] = (w.to(torch.float32) + delta).to(w.dtype)
    return out


def energy_report_text(report: dict[str, dict], top: int = 20) -> str:
    """A text table (module, rank, kept energy %) of the `top` least-kept modules, then totals over all modules."""
    if not report:
        return "no modules"
    rows = sorted(report.items(), key=lambda kv: kv[1].get("energy", 1.0))
    width = max(6, *(len(name) for name, _ in rows[:top]))
    lines = [f"{'module':<{width}}  {'rank':>5}  {'energy %':>8}"]
    lines += [f"{name:<{width}}  {r.get('rank', 0):>5}  {100.0 * r.get('energy', 1.0):>8.2f}" for name, r in rows[:top]]
    if len(rows) > top:
        lines.append(f"... {len(rows) - top} more modules with higher kept energy")
    energies = [r.get("energy", 1.0) for _, r in rows]
    lines.append(f"total: {len(rows)} modules, rank sum {sum(int(r.get('rank', 0)) for _, r in rows)}, "
                 f"kept energy mean {100.0 * sum(energies) / len(energies):.2f}% / min {100.0 * min(energies):.2f}%")
    return "\n".join(lines)


# A1111 "LoRA Block Weight" layouts: one weight per block, BASE (text encoder) first.
BLOCK_LAYOUTS = {
    17: ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID",
         "OUT03", "OUT04", "OUT05", "OUT06", "OUT07", "OUT08", "OUT09", "OUT10", "OUT11"],  # SD1.x / SD2.x
    12: ["BASE", "IN04", "IN05", "IN07", "IN08", "MID", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"],  # SDXL
    26: ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["MID"] + [f"OUT{i:02d}" for i in range(12)],  # every block
}


def check_strength(value, what: str = "strength") -> float:
    """`value` as a float when it is a finite number within ±STRENGTH_LIMIT; ValueError naming `what` otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number from {-STRENGTH_LIMIT:g} to {STRENGTH_LIMIT:g}; got "
                         f"{value!r}.") from None
    if not math.isfinite(number) or abs(number) > STRENGTH_LIMIT:
        raise ValueError(f"{what} is {number}; expected a finite number from {-STRENGTH_LIMIT:g} to "
                         f"{STRENGTH_LIMIT:g} (1 = the LoRA as trained). Type a number in that range.")
    return number


def parse_block_weights(text: str, what: str = "Block weights") -> list[float] | None:
    """'1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1' → 17 floats (SD1) or 12 (SDXL); empty text → None (no block weights).
    Every weight must be finite and within ±BLOCK_WEIGHT_LIMIT; errors name `what` and the block."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text such as '1,0.5,...'; got a {type(text).__name__}.")
    if not text.strip():
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise ValueError(f"{what} '{text[:200]}' are not comma-separated numbers.") from None
    if len(values) not in BLOCK_LAYOUTS:
        raise ValueError(f"{what}: got {len(values)} block weights; A1111's LoRA Block Weight uses 17 for "
                         f"SD1.x/SD2.x ({','.join(BLOCK_LAYOUTS[17])}), 12 for SDXL ({','.join(BLOCK_LAYOUTS[12])}) "
                         "or 26 for every block (BASE, IN00-IN11, MID, OUT00-OUT11; LoCon).")
    for block, value in zip(BLOCK_LAYOUTS[len(values)], values):
        if not math.isfinite(value) or abs(value) > BLOCK_WEIGHT_LIMIT:
            raise ValueError(f"{what}: block {block} is {value}; every block weight must be a finite number from "
                             f"{-BLOCK_WEIGHT_LIMIT:g} to {BLOCK_WEIGHT_LIMIT:g} (1 = unchanged, 0 = off).")
    return values


def block_of(base_name: str) -> str | None:
    """The A1111 block a kohya module belongs to: BASE for text encoders (kohya's lora_te* and ComfyUI's generic
    text_encoders.* names), IN/MID/OUT by LDM index, else None."""
    if base_name.startswith(("lora_te", GENERIC_TE_PREFIX)):
        return "BASE"
    m = re.match(r"lora_unet_(input|output)_blocks_(\d+)_", base_name)
    if m:
        return f"{'IN' if m.group(1) == 'input' else 'OUT'}{int(m.group(2)):02d}"
    return "MID" if base_name.startswith("lora_unet_middle_block_") else None


def apply_block_weights(modules: dict[str, LoraModule], weights: list[float]) -> dict[str, LoraModule]:
    """Scales each module by its block's weight (A1111 LoRA Block Weight). Modules in blocks the chosen layout does
    not list (the 17-value SD1 layout skips blocks without attention, where only LoCon adapts) keep weight 1; use the
    26-value layout to weight every block."""
    layout = dict(zip(BLOCK_LAYOUTS[len(weights)], weights))
    out = {}
    for name, mod in modules.items():
        w = layout.get(block_of(name), 1.0)
        out[name] = mod if w == 1.0 else LoraModule(down=mod.down, up=mod.up * w, alpha=mod.alpha)
    return out

