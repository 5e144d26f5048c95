"""OSEM / MLEM reconstruction with attenuation, normalisation, PSF and additive background in the model.

Update (Hudson & Larkin, IEEE TMI 13:601, 1994), for subset S_k::

    x ← x / s_k · Bᵀ_k ( y_k / (B_k x + b_k) ),      s_k = Bᵀ_k 1

where B = c ⊙ A G m is :class:`nmai.sim.model.EmissionModel`'s linear part. With one subset it is MLEM,
whose Poisson log-likelihood Σ y log ȳ − ȳ never decreases. Pixels the scanner does not see (outside the
transaxial FOV) stay 0.
"""

from __future__ import annotations

from ..progress import as_progress
from .model import EmissionModel


def poisson_loglik(y, ybar) -> float:
    """Σ y log ȳ − ȳ (the data-dependent constant −log y! omitted)."""
    import torch

    ybar = ybar.clamp_min(1e-30)
    return float((torch.where(y > 0, y * torch.log(ybar), torch.zeros_like(y)) - ybar).sum(dtype=torch.float64))


def osem(y, model: EmissionModel, iterations: int = 3, subsets: int = 8, x0=None, progress=None,
         callback=None):
    """Reconstruct prompts ``y`` (LORs, slices) → activity (pixels, slices), Bq/ml.

    ``callback(iteration, x)`` is called after each full iteration (used to track the likelihood).
    """
    import torch

    if iterations < 1 or subsets < 1:
        raise ValueError("iterations and subsets must be >= 1")
    if subsets > model.sm.scanner.n_views:
        raise ValueError(f"at most {model.sm.scanner.n_views} subsets (one view each)")
    progress = as_progress(progress)
    y = y.to(torch.float32)
    sens = [model.sensitivity(k, subsets) for k in range(subsets)]
    inv_sens = [torch.where(s > s.max() * 1e-6, 1.0 / s.clamp_min(1e-30), torch.zeros_like(s)) for s in sens]
    seen = sum(inv_sens) > 0
    if x0 is None:
        # uniform start at the mean activity the counts imply: Σ(y − b) / Σ sensitivity
        net = float((y - model.background).clamp_min(0).sum())
        total = float(sum(s.sum() for s in sens))
        x = torch.full((model.sm.n_pixels, model.n_slices), max(net / max(total, 1e-30), 1e-6))
    else:
        x = x0.clone().to(torch.float32)
    x = x * seen
    ys = [model.subset_rows(y, k, subsets) for k in range(subsets)]
    steps = iterations * subsets
    for it in range(iterations):
        for k in range(subsets):
            progress((it * subsets + k) / steps, f"OSEM iteration {it + 1}/{iterations}, subset {k + 1}/{subsets}")
            ybar = model.expected(x, k, subsets)
            ratio = torch.where(ybar > 0, ys[k] / ybar.clamp_min(1e-30), torch.zeros_like(ybar))
            x = x * model.backproject(ratio, k, subsets) * inv_sens[k]
        if callback is not None:
            callback(it + 1, x)
    progress(1.0, "OSEM done")
    return x
