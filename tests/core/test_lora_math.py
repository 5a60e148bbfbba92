"""LoRA maths on tiny real tensors: exact merges, exact rank reduction, extraction, baking in and out."""


import pytest
import torch

from atelier.core.lora_format import LoraModule, join_modules, split_modules
from atelier.core.lora_math import (apply_to_weights, check_finite, energy_report_text, extract, extract_module,
                                    merge_average_weights, merge_concat, merge_svd, randomized_svd, reduce_rank, resize)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def module(out, inp, r, alpha=None, kernel=None, seed=0):
    g = gen(seed)
    down = torch.randn(r, inp, *(kernel or ()), generator=g) / inp ** 0.5
    up = torch.randn(out, r, *((1, 1) if kernel else ()), generator=g)
    return LoraModule(down=down, up=up, alpha=float(r if alpha is None else alpha))


def with_spectrum(sigmas, out=12, inp=9, seed=0, alpha=None):
    """A module whose ΔW (strength 1) has exactly these singular values."""
    g = gen(seed)
    r = len(sigmas)
    q_u, _ = torch.linalg.qr(torch.randn(out, r, generator=g))
    q_d, _ = torch.linalg.qr(torch.randn(inp, r, generator=g))
    alpha = float(r if alpha is None else alpha)
    up = q_u * torch.tensor(sigmas) * (r / alpha)  # the alpha/r scale is undone here so σ are exact
    return LoraModule(down=q_d.T.contiguous(), up=up, alpha=alpha)


def three_loras():
    a = {"lora_unet_a": module(16, 8, 4, alpha=2, seed=1),
         "lora_unet_conv": module(6, 5, 3, alpha=1, kernel=(3, 3), seed=2)}
    b = {"lora_unet_a": module(16, 8, 8, alpha=8, seed=3), "lora_te_only_b": module(7, 10, 2, alpha=4, seed=4)}
    c = {"lora_unet_a": module(16, 8, 2, alpha=1, seed=5),
         "lora_unet_conv": module(6, 5, 5, alpha=5, kernel=(3, 3), seed=6)}
    return [(a, 0.7), (b, -0.4), (c, 1.3)]


def expected_sum(loras):
    out = {}
    for mods, s in loras:
        for base, m in mods.items():
            out[base] = out.get(base, 0) + m.delta(s)
    return out


# ---------------------------------------------------------------- split / join / finite


def test_split_modules_defaults_alpha_to_rank_and_lists_lycoris_keys():
    sd = {"lora_unet_a.lora_down.weight": torch.randn(4, 8, generator=gen(0)),
          "lora_unet_a.lora_up.weight": torch.randn(16, 4, generator=gen(1)),
          "lora_unet_a.alpha": torch.tensor(2.0),
          "lora_unet_b.lora_down.weight": torch.randn(3, 5, 3, 3, generator=gen(2)),
          "lora_unet_b.lora_up.weight": torch.randn(6, 3, 1, 1, generator=gen(3)),
          "lora_unet_h.hada_w1_a": torch.randn(4, 2), "lora_unet_h.hada_w1_b": torch.randn(2, 4),
          "lora_unet_h.alpha": torch.tensor(2.0),
          "lora_unet_d.lora_down.weight": torch.randn(2, 4), "lora_unet_d.lora_up.weight": torch.randn(4, 2),
          "lora_unet_d.dora_scale": torch.randn(4, 1)}
    before = {k: v.clone() for k, v in sd.items()}
    modules, others = split_modules(sd)
    assert set(modules) == {"lora_unet_a", "lora_unet_b"}
    assert modules["lora_unet_a"].alpha == 2.0 and modules["lora_unet_b"].alpha == 3.0  # missing alpha -> rank
    conv = modules["lora_unet_b"]
    assert conv.is_conv and conv.rank == 3 and conv.shape == (6, 5, 3, 3)
    # LyCORIS keys, their alpha, and every key of a DoRA module (not plain LoRA) are returned as others
    assert sorted(others) == sorted(["lora_unet_h.hada_w1_a", "lora_unet_h.hada_w1_b", "lora_unet_h.alpha",
                                     "lora_unet_d.lora_down.weight", "lora_unet_d.lora_up.weight",
                                     "lora_unet_d.dora_scale"])
    assert all(torch.equal(sd[k], before[k]) for k in sd)
    joined = join_modules(modules, dtype=torch.float32)
    again, _ = split_modules(joined)
    for base, m in modules.items():
        assert joined[base + ".alpha"].ndim == 0
        assert torch.allclose(again[base].delta(), m.delta())
    assert join_modules(modules)["lora_unet_a.lora_up.weight"].dtype == torch.float16


def test_split_modules_refuses_half_modules_and_rank_mismatch():
    with pytest.raises(ValueError, match=r"lora_unet_x.*\(4, 8\).*lora_up"):
        split_modules({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)})
    with pytest.raises(ValueError, match=r"lora_unet_x.*\(4, 8\).*\(16, 3\)"):
        split_modules({"lora_unet_x.lora_down.weight": torch.zeros(4, 8),
                       "lora_unet_x.lora_up.weight": torch.zeros(16, 3)})


def test_check_finite_names_the_first_bad_key():
    sd = {"lora_unet_a.lora_down.weight": torch.ones(2, 3), "lora_unet_a.lora_up.weight": torch.ones(3, 2)}
    check_finite(sd)
    sd["lora_unet_b.lora_up.weight"] = torch.tensor([[1.0, float("nan")]])
    sd["lora_unet_c.lora_up.weight"] = torch.tensor([[float("inf")]])
    with pytest.raises(ValueError, match=r"'lora_unet_b\.lora_up\.weight' holds 1 NaN"):
        check_finite(sd)


# ---------------------------------------------------------------- merges


def test_concat_merge_is_exact_with_mixed_ranks_alphas_negative_strength_and_conv():
    loras = three_loras()
    snapshot = [{b: (m.down.clone(), m.up.clone()) for b, m in mods.items()} for mods, _ in loras]
    merged = merge_concat(loras)
    want = expected_sum(loras)
    assert set(merged) == set(want) == {"lora_unet_a", "lora_unet_conv", "lora_te_only_b"}
    for base, m in merged.items():
        assert m.delta(1.0).shape == want[base].shape
        assert torch.allclose(m.delta(1.0), want[base], atol=1e-5, rtol=1e-5), base
    assert merged["lora_unet_a"].rank == 4 + 8 + 2 and merged["lora_unet_a"].alpha == 14.0
    assert merged["lora_unet_conv"].is_conv and merged["lora_unet_conv"].rank == 8
    # present in one LoRA only: kept, at its strength
    assert torch.allclose(merged["lora_te_only_b"].delta(), loras[1][0]["lora_te_only_b"].delta(-0.4), atol=1e-6)
    for (mods, _), snap in zip(loras, snapshot):
        assert all(torch.equal(mods[b].down, d) and torch.equal(mods[b].up, u) for b, (d, u) in snap.items())


def test_strength_applies_once_not_squared():
    m = module(10, 6, 3, alpha=1.5, seed=7)
    merged = merge_concat([({"x": m}, 0.5)])["x"]
    assert torch.allclose(merged.delta(), 0.5 * m.delta(), atol=1e-6)
    assert not torch.allclose(merged.delta(), 0.25 * m.delta(), atol=1e-3)


def test_concat_merges_linear_with_1x1_conv_and_skips_zero_strength():
    lin = module(6, 5, 2, seed=1)
    conv = module(6, 5, 3, kernel=(1, 1), seed=2)
    merged = merge_concat([({"p": lin}, 1.0), ({"p": conv}, 2.0), ({"p": module(6, 5, 4, seed=3)}, 0.0)])["p"]
    assert merged.is_conv and merged.rank == 5
    assert torch.allclose(merged.delta(), lin.delta().reshape(6, 5, 1, 1) + conv.delta(2.0), atol=1e-5)


def test_different_architectures_and_kernels_are_refused_naming_the_base():
    with pytest.raises(ValueError, match=r"architectures.*'lora_unet_a' is \(16, 8\) in LoRA 1 but \(32, 8\)"):
        merge_concat([({"lora_unet_a": module(16, 8, 2)}, 1.0), ({"lora_unet_a": module(32, 8, 2)}, 1.0)])
    with pytest.raises(ValueError, match=r"kernel.*'lora_unet_c'"):
        merge_concat([({"lora_unet_c": module(6, 5, 2, kernel=(3, 3))}, 1.0),
                      ({"lora_unet_c": module(6, 5, 2, kernel=(1, 1))}, 1.0)])
    with pytest.raises(ValueError, match="different architectures"):
        merge_svd([({"a": module(16, 8, 2)}, 1.0), ({"a": module(16, 9, 2)}, 1.0)], 2)


def test_average_weights_is_exact_for_shared_downs_and_refuses_different_sets():
    g = gen(3)
    down = torch.randn(4, 8, generator=g)
    ups = [torch.randn(16, 4, generator=g) for _ in range(3)]
    loras = [({"a": LoraModule(down, u, 2.0)}, w) for u, w in zip(ups, (1.0, 2.0, 1.0))]
    avg = merge_average_weights(loras)["a"]
    want = sum(w / 4.0 * m["a"].delta() for m, w in loras)
    assert torch.allclose(avg.delta(), want, atol=1e-5) and avg.alpha == 2.0 and avg.rank == 4
    # with different downs it is only an approximation of averaging ΔW (the documented caveat)
    other = [({"a": module(16, 8, 4, alpha=2, seed=s)}, 1.0) for s in (1, 2)]
    approx = merge_average_weights(other)["a"].delta()
    assert not torch.allclose(approx, 0.5 * (other[0][0]["a"].delta() + other[1][0]["a"].delta()), atol=1e-3)
    with pytest.raises(ValueError, match=r"'b' in LoRA 2 but not in LoRA 1"):
        merge_average_weights([({"a": module(16, 8, 4)}, 1.0), ({"a": module(16, 8, 4), "b": module(4, 4, 1)}, 1.0)])
    with pytest.raises(ValueError, match=r"'a' is down \(4, 8\).*down \(2, 8\)"):
        merge_average_weights([({"a": module(16, 8, 4)}, 1.0), ({"a": module(16, 8, 2)}, 1.0)])


# ---------------------------------------------------------------- rank reduction


def test_reduce_rank_to_full_rank_is_lossless_linear_and_conv():
    for m in (module(20, 12, 6, alpha=3, seed=1), module(7, 5, 4, alpha=16, kernel=(3, 3), seed=2)):
        for target in (m.rank, m.rank + 10):
            new, rep = reduce_rank(m, target)
            assert new.rank == m.rank and new.alpha == float(m.rank) and new.down.shape[1:] == m.down.shape[1:]
            assert torch.allclose(new.delta(), m.delta(), atol=1e-5)
            assert rep["rank"] == m.rank and rep["energy"] == pytest.approx(1.0)


@pytest.mark.parametrize("kernel", [None, (3, 3)])
def test_reduce_rank_matches_the_optimal_truncated_svd_of_the_explicit_delta(kernel):
    m = module(24, 10, 8, alpha=4, kernel=kernel, seed=4)
    dense = m.delta().reshape(24, -1).double()
    s = torch.linalg.svdvals(dense)
    for k in (1, 3, 5):
        new, rep = reduce_rank(m, k)
        err = torch.linalg.norm(dense - new.delta().reshape(24, -1).double())
        optimal = s[k:].pow(2).sum().sqrt()  # Eckart–Young
        assert abs(float(err) - float(optimal)) <= 1e-4 * float(optimal)
        assert rep["energy"] == pytest.approx(float(s[:k].pow(2).sum() / s.pow(2).sum()), rel=1e-6)
        assert rep["sigma_max"] == pytest.approx(float(s[0]), rel=1e-5)


class LargestTensor(torch.overrides.TorchFunctionMode):
    """Records the element count of the largest tensor any torch call returns inside the block."""

    numel = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_reduce_rank_never_builds_the_dense_delta():
    # ΔW would be 20000 x 20000 float32 = 1.6 GB; the factor-only path needs a few hundred kB.
    g = gen(0)
    m = LoraModule(down=torch.randn(4, 20000, generator=g), up=torch.randn(20000, 4, generator=g), alpha=4.0)
    with LargestTensor() as largest:
        new, rep = reduce_rank(m, 2)
    assert largest.numel <= 20000 * 8, f"reduce_rank made a tensor of {largest.numel:,} elements"  # factors only
    assert new.up.shape == (20000, 2) and new.down.shape == (2, 20000) and 0.0 < rep["energy"] < 1.0
    # the kept part is the top of the spectrum: check on a few rows without building all of ΔW
    rows = slice(0, 50)
    full = m.up[rows] @ m.down
    kept = new.up[rows] @ new.down
    assert torch.linalg.norm(full - kept) < torch.linalg.norm(full)


def test_dynamic_methods_pick_the_expected_rank_from_known_singular_values():
    m = with_spectrum([10.0, 5.0, 1.0, 0.1], alpha=2.0)
    assert torch.allclose(torch.linalg.svdvals(m.delta())[:4], torch.tensor([10.0, 5.0, 1.0, 0.1]), atol=1e-4)

    def k(**kw):
        return reduce_rank(m, **kw)[1]["rank"]

    assert k(dynamic="sv_ratio", dynamic_param=4) == 2  # keeps σ >= 2.5
    assert k(dynamic="sv_ratio", dynamic_param=20) == 3  # σ >= 0.5
    assert k(dynamic="sv_fro", dynamic_param=0.85) == 1  # 10/sqrt(126.01) = 0.891: a norm ratio, not energy
    assert k(dynamic="sv_fro", dynamic_param=0.99) == 2  # sqrt(125)/sqrt(126.01) = 0.996
    assert k(dynamic="sv_fro", dynamic_param=0.999) == 3
    assert k(dynamic="sv_cumulative", dynamic_param=0.9) == 2  # 15/16.1 = 0.93
    assert k(dynamic="sv_cumulative", dynamic_param=0.95) == 3
    assert k(dynamic="sv_ratio", dynamic_param=1000, max_rank=2) == 2  # max_rank caps
    assert k(rank=1, dynamic="sv_ratio", dynamic_param=1000) == 1  # a rank given with a dynamic method caps too
    assert k(dynamic="sv_ratio", dynamic_param=1.0) == 1
    new, rep = reduce_rank(m, dynamic="sv_ratio", dynamic_param=4)
    assert rep["energy"] == pytest.approx(125 / 126.01, rel=1e-5) and rep["sigma_max"] == pytest.approx(10.0, rel=1e-5)
    assert torch.allclose(torch.linalg.svdvals(new.delta())[:3], torch.tensor([10.0, 5.0, 0.0]), atol=1e-4)
    with pytest.raises(ValueError, match="sv_ratio.*>= 1"):
        reduce_rank(m, dynamic="sv_ratio", dynamic_param=0.9)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        reduce_rank(m, dynamic="sv_fro", dynamic_param=1.5)
    with pytest.raises(ValueError, match="rank or a dynamic"):
        reduce_rank(m)


def test_zero_module_keeps_one_rank_with_full_energy():
    m = LoraModule(down=torch.zeros(3, 5), up=torch.zeros(4, 3), alpha=3.0)
    new, rep = reduce_rank(m, dynamic="sv_fro", dynamic_param=0.9)
    assert rep == {"rank": 1, "energy": 1.0, "sigma_max": 0.0} and torch.count_nonzero(new.delta()) == 0


def test_merge_svd_to_total_rank_is_exact_and_reports_energy_in_unit_interval():
    loras = three_loras()
    merged, report = merge_svd(loras, 64)
    want = expected_sum(loras)
    for base, m in merged.items():
        assert torch.allclose(m.delta(), want[base], atol=1e-5), base
    low, low_report = merge_svd(loras, 2)
    assert all(m.rank <= 2 for m in low.values())
    for rep in list(report.values()) + list(low_report.values()):
        assert 0.0 <= rep["energy"] <= 1.0 + 1e-12
    assert low_report["lora_unet_a"]["energy"] < 1.0
    resized, rep = resize(merged, dynamic="sv_fro", dynamic_param=1.0)
    assert all(torch.allclose(resized[b].delta(), want[b], atol=1e-5) for b in want)
    text = energy_report_text(low_report, top=2)
    lines = text.splitlines()
    assert "module" in lines[0] and "1 more" in text and lines[-1].startswith("total: 3 modules")
    energies = [float(l.split()[-1]) for l in lines[1:3]]
    assert energies == sorted(energies)


# ---------------------------------------------------------------- extraction


def low_rank_diff(out, inp, r, kernel=None, seed=0, noise=1e-6):
    g = gen(seed)
    n = inp * (kernel[0] * kernel[1] if kernel else 1)
    mat = torch.randn(out, r, generator=g) @ torch.randn(r, n, generator=g) + noise * torch.randn(out, n, generator=g)
    return mat.reshape(out, inp, *kernel) if kernel else mat


@pytest.mark.parametrize("kernel", [None, (3, 3)])
@pytest.mark.parametrize("method", ["randomized", "full"])
def test_extract_recovers_a_low_rank_difference(kernel, method):
    diff = low_rank_diff(40, 12, 6, kernel)
    before = diff.clone()
    m, rep = extract_module(diff, 6, method=method, generator=gen(1))
    assert torch.equal(diff, before)
    assert m.rank == 6 and m.alpha == 6.0 and m.is_conv == (kernel is not None) and m.shape == tuple(diff.shape)
    assert rep["rank"] == 6 and rep["error"] < 1e-3 and rep["energy"] == pytest.approx(1.0, abs=1e-6)
    assert torch.linalg.norm(m.delta() - diff) / torch.linalg.norm(diff) < 1e-3


def test_randomized_svd_is_near_optimal_on_a_decaying_spectrum():
    g = gen(5)
    q_u, _ = torch.linalg.qr(torch.randn(320, 320, generator=g))
    q_v, _ = torch.linalg.qr(torch.randn(768, 320, generator=g))
    sigma = torch.arange(1, 321, dtype=torch.float32) ** -0.8  # slow power-law decay, like fine-tune diffs
    mat = (q_u * sigma) @ q_v.T
    u, s, v = randomized_svd(mat, 32, generator=gen(1))
    assert u.shape == (320, 32) and s.shape == (32,) and v.shape == (768, 32)
    assert torch.allclose(u.T @ u, torch.eye(32), atol=1e-4)
    _, full = extract_module(mat, 32, method="full")
    _, rand = extract_module(mat, 32, method="randomized", generator=gen(1))
    optimal = float(sigma[32:].pow(2).sum().sqrt() / sigma.pow(2).sum().sqrt())
    assert full["error"] == pytest.approx(optimal, rel=1e-3)
    assert rand["error"] <= 1.05 * full["error"]
    assert full["error"] ** 2 + full["energy"] == pytest.approx(1.0, abs=1e-5)
    # deterministic for a given generator seed, and independent of the global RNG
    torch.manual_seed(123)
    assert torch.equal(randomized_svd(mat, 8, generator=gen(2))[1], randomized_svd(mat, 8, generator=gen(2))[1])


def test_dynamic_extraction_chooses_the_rank_from_the_spectrum():
    g = gen(2)
    q_u, _ = torch.linalg.qr(torch.randn(30, 5, generator=g))
    q_v, _ = torch.linalg.qr(torch.randn(20, 5, generator=g))
    mat = (q_u * torch.tensor([10.0, 5.0, 1.0, 0.1, 0.01])) @ q_v.T
    for method in ("randomized", "full"):
        assert extract_module(mat, dynamic="sv_ratio", dynamic_param=4, method=method)[1]["rank"] == 2
        assert extract_module(mat, dynamic="sv_fro", dynamic_param=0.999, method=method)[1]["rank"] == 3
        assert extract_module(mat, dynamic="sv_ratio", dynamic_param=1e6, max_rank=3, method=method)[1]["rank"] == 3


def test_clamp_quantile_changes_factors_only_when_set():
    diff = low_rank_diff(40, 30, 8, noise=0.0, seed=3)
    plain, rep_plain = extract_module(diff, 8, generator=gen(1))
    off, _ = extract_module(diff, 8, generator=gen(1), clamp_quantile=1.0)  # the largest |value| clamps nothing
    assert torch.equal(plain.up, off.up) and torch.equal(plain.down, off.down)
    assert rep_plain["error"] < 1e-5  # None leaves the exact factors
    clamped, rep = extract_module(diff, 8, generator=gen(1), clamp_quantile=0.9)
    values = torch.cat([plain.up.flatten(), plain.down.flatten()]).abs()
    hi = float(torch.quantile(values, 0.9))
    assert not torch.equal(clamped.up, plain.up)
    assert float(torch.cat([clamped.up.flatten(), clamped.down.flatten()]).abs().max()) <= hi + 1e-6
    assert rep["error"] > rep_plain["error"]


def test_extract_skips_unchanged_layers_and_refuses_shape_mismatch():
    g = gen(4)
    base = {"a.weight": torch.randn(16, 8, generator=g), "b.weight": torch.randn(16, 8, generator=g),
            "c.weight": torch.randn(6, 5, 3, 3, generator=g)}
    tuned = {"a.weight": base["a.weight"] + low_rank_diff(16, 8, 2, seed=1),
             "b.weight": base["b.weight"] + 1e-4,  # a tiny change under min_diff
             "c.weight": base["c.weight"] + low_rank_diff(6, 5, 2, kernel=(3, 3), seed=2)}
    names = {"a.weight": "lora_unet_a", "b.weight": "lora_unet_b", "c.weight": "lora_unet_c"}
    modules, report, skipped = extract(tuned, base, names, rank=4, min_diff=1e-3)
    assert set(modules) == {"lora_unet_a", "lora_unet_c"} and skipped == ["b.weight"]
    assert modules["lora_unet_c"].is_conv and report["lora_unet_a"]["error"] < 1e-3
    baked = apply_to_weights({k: base[k] for k in ("a.weight", "c.weight")}, modules, names)
    assert torch.allclose(baked["a.weight"], tuned["a.weight"], atol=1e-4)
    assert torch.allclose(baked["c.weight"], tuned["c.weight"], atol=1e-4)
    same, _, skipped = extract(base, base, names, rank=4)  # identical models: everything skipped at min_diff 0
    assert same == {} and skipped == list(names)
    with pytest.raises(ValueError, match=r"'a.weight' is \(16, 9\) in the tuned model but \(16, 8\)"):
        extract({**tuned, "a.weight": torch.zeros(16, 9)}, base, names, rank=4)


def test_zero_difference_gives_no_module():
    assert extract_module(torch.zeros(8, 4), 2) == (None, {"rank": 0, "energy": 1.0, "error": 0.0})


# ---------------------------------------------------------------- merging into weights


def test_apply_then_unapply_gives_the_weights_back_and_leaves_inputs_untouched():
    g = gen(6)
    weights = {"w1": torch.randn(16, 8, generator=g), "w2": torch.randn(6, 5, 3, 3, generator=g),
               "w3": torch.randn(4, 4, generator=g), "w4": torch.randn(7, 3, 1, 1, generator=g).half()}
    modules = {"m1": module(16, 8, 4, alpha=2, seed=1), "m2": module(6, 5, 2, kernel=(3, 3), seed=2),
               "m4": module(7, 3, 2, seed=3)}  # a linear LoRA on a 1x1 conv weight, as ComfyUI allows
    names = {"w1": "m1", "w2": "m2", "w3": "unused", "w4": "m4"}
    before = {k: v.clone() for k, v in weights.items()}
    baked = apply_to_weights(weights, modules, names, 1.0)
    assert all(torch.equal(weights[k], before[k]) for k in weights)
    assert torch.allclose(baked["w1"], weights["w1"] + modules["m1"].delta(), atol=1e-6)
    assert baked["w3"] is weights["w3"] and baked["w4"].dtype == torch.float16 and baked["w4"].shape == (7, 3, 1, 1)
    back = apply_to_weights(baked, modules, names, -1.0)
    for k in ("w1", "w2", "w3"):
        assert torch.allclose(back[k], weights[k], atol=1e-5), k
    with pytest.raises(ValueError, match=r"1 LoRA modules have no weight.*'?m9"):
        apply_to_weights(weights, {**modules, "m9": module(2, 2, 1)}, names)
    with pytest.raises(ValueError, match=r"'m1' changes a \(16, 8\) weight but 'w3' is \(4, 4\)"):
        apply_to_weights(weights, modules, {**names, "w3": "m1"})


def test_block_weights_follow_a1111_layouts():
    from atelier.core.lora_math import apply_block_weights, block_of, parse_block_weights

    assert block_of("lora_te_text_model_encoder_layers_0_mlp_fc1") == "BASE"
    assert block_of("text_encoders.qwen25_7b.transformer.model.layers.0.mlp.up_proj") == "BASE"  # generic TE keys
    assert block_of("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") == "IN04"
    assert block_of("lora_unet_middle_block_1_proj_in") == "MID"
    assert block_of("lora_unet_output_blocks_11_1_proj_out") == "OUT11"
    weights = parse_block_weights("0, 1,1,1,1,1,1, 0.5, 1,1,1,1,1,1,1,1,1")
    g = torch.Generator().manual_seed(0)
    mod = lambda: LoraModule(down=torch.randn(2, 4, generator=g), up=torch.randn(4, 2, generator=g), alpha=2.0)
    mods = {"lora_te_text_model_encoder_layers_0_mlp_fc1": mod(), "lora_unet_middle_block_1_proj_in": mod(),
            "lora_unet_input_blocks_1_1_proj_in": mod()}
    out = apply_block_weights(mods, weights)
    assert torch.equal(out["lora_te_text_model_encoder_layers_0_mlp_fc1"].delta(), torch.zeros(4, 4))
    assert torch.allclose(out["lora_unet_middle_block_1_proj_in"].delta(),
                          0.5 * mods["lora_unet_middle_block_1_proj_in"].delta())
    assert out["lora_unet_input_blocks_1_1_proj_in"] is mods["lora_unet_input_blocks_1_1_proj_in"]
    assert parse_block_weights("") is None
    with pytest.raises(ValueError, match="17 for SD1.x/SD2.x.*12 for SDXL.*26 for every block"):
        parse_block_weights("1,0,1")
    every = apply_block_weights({"lora_unet_output_blocks_0_1_proj_in": mods["lora_unet_input_blocks_1_1_proj_in"]},
                                parse_block_weights(",".join(["1"] * 14 + ["0"] + ["1"] * 11)))  # OUT00 = 0
    assert torch.equal(every["lora_unet_output_blocks_0_1_proj_in"].delta(), torch.zeros(4, 4))


def test_resize_and_svd_merge_report_each_layer_and_stop_when_the_callback_raises():
    g = gen(0)
    modules = {f"lora_unet_m{i}": LoraModule(down=torch.randn(4, 8, generator=g), up=torch.randn(6, 4, generator=g),
                                             alpha=4.0) for i in range(3)}
    seen = []
    resize(modules, 2, on_layer=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]

    class Cancelled(Exception):
        pass

    def cancel_at_two(done, total):
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        merge_svd([(modules, 1.0)], 2, on_layer=cancel_at_two)
