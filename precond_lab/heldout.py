"""Split-sample (held-out) evaluation of second moments and their Kronecker fits.

A target's samples are split into disjoint folds with second moments ``C_s``
(``split_folds``, ``split_target``). With the eigenpairs ``(λ_{s,i}, u_{s,i})``
of a source fold (from the sample-space Gram matrix: never an ``mn × mn`` matrix), the
finite-sample questions of Liu et al. (2026, §4–5) are the directional scales
``uᵀ C' u = E'[⟨G, U⟩²]`` (per-sample products) of other folds along them:

* held-out scale error ``ξ_i = log10(u_{s,i}ᵀ C_{s'} u_{s,i} / λ_{s,i})``
  (``heldout_scale_error``; positive: the source under-estimates direction ``i``);
* held-out gain error of a fitted ``S`` (``heldout_gain_error``): with ``h_i`` the
  mean held-out scale along ``u_{0,i}`` and ``s_i = 1/(u_{0,i}ᵀ S⁻¹ u_{0,i})`` the
  fit's scale there, ``e_i = p · log10(s_i / h_i)`` for the preconditioner power ``p``
  (``p = −½``: ``e_i = ½ log10(h_i u_{0,i}ᵀ S⁻¹ u_{0,i})``, the paper's form);
* recovery error of a few-sample or EMA fit ``Ŝ`` against its own large-sample fit
  ``S_ref = Σ_j ω_j v_j v_jᵀ`` (``recovery_error``):
  ``γ_j = p · log10((1/v_jᵀ Ŝ⁻¹ v_j) / ω_j)``;
* subspace overlap ``O(k) = ‖U_kᵀ V_k‖²_F / k`` of the leading ``k`` eigenvectors of a
  target and of a Kronecker fit (``subspace_overlap``);
* the cost of keeping ``kl_optimal``'s factors as rank ``r`` + a flat tail (Pro-KLShampoo,
  ``estimators.flat_tail``) against ``r``: the excess KL over the unrestricted fit and the
  recovery (gain) error of the restricted fit against it (``flat_tail_errors``);
* gain replacement (P4 App. D.3): the gains ``u_iᵀ S_d⁻¹ u_i`` of a donor fit along the
  Kronecker eigenvectors ``u_i`` of a base fit (``eigen_gains``), and the base fit with the
  gains of its leading or tail directions replaced by the donor's (``swap_gains``).

Results are ``xarray.DataArray`` objects with a ``direction`` (eigen-index, descending
eigenvalue) dimension, or ``k`` for the overlap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from . import estimators as est
from . import metrics as met
from ._validation import check_finite, check_number
from .structures import Diagonal, EigenKronecker, Kronecker, Structure
from .targets import DampedTarget, DenseTarget, SampleTarget, Target, as_target

__all__ = [
    "crossfit_scale_error",
    "directional_scales",
    "eigen_gains",
    "disjoint_blocks",
    "fit_errors",
    "fold_scale_errors",
    "trace_power_fit_errors",
    "flat_tail_errors",
    "heldout_gain_error",
    "heldout_scale_error",
    "inverse_quadratic",
    "minibatch_means",
    "recovery_error",
    "source_directions",
    "spectrum_log_ratio",
    "split_folds",
    "split_target",
    "subspace_overlap",
    "swap_gains",
]

_METHODS = ("random", "batch")


def split_folds(
    num_samples: int,
    num_folds: int,
    *,
    method: str = "random",
    batch_size: int = 1,
    seed: int = 0,
) -> list[np.ndarray]:
    """Disjoint index sets covering ``range(num_samples)`` (equal sizes, remainder dropped).

    Args:
        num_samples: number of samples ``N``.
        num_folds: number of folds ``K ≥ 2``.
        method: ``"random"`` (a random permutation of samples, or of whole mini-batches
            when ``batch_size > 1``) or ``"batch"`` (contiguous runs in capture order, so
            consecutive mini-batches stay together).
        batch_size: samples per mini-batch; folds never split a mini-batch.
        seed: seed of the permutation (``"random"``).

    Returns:
        ``K`` sorted integer arrays of equal length.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}")
    if int(num_folds) != num_folds or num_folds < 2:
        raise ValueError(f"num_folds must be an integer ≥ 2; got {num_folds!r}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    num_batches = int(num_samples) // int(batch_size)
    per_fold = num_batches // int(num_folds)
    if per_fold < 1:
        raise ValueError(
            f"{num_samples} samples in batches of {batch_size} cannot fill {num_folds} folds"
        )
    order = np.arange(num_batches)
    if method == "random":
        order = np.random.default_rng(seed).permutation(num_batches)
    folds = []
    for f in range(int(num_folds)):
        batches = np.sort(order[f * per_fold : (f + 1) * per_fold])
        idx = (batches[:, None] * batch_size + np.arange(batch_size)[None, :]).ravel()
        folds.append(idx)
    return folds


def split_target(samples, num_folds: int, **kwargs) -> list[SampleTarget]:
    """``split_folds`` of ``(N, m, n)`` samples (array or DataArray) into SampleTargets.

    Each fold is an unweighted target (``1/N_fold``); keyword arguments go to
    ``split_folds``.
    """
    num = int(np.shape(samples)[0])
    return [SampleTarget(samples[idx]) for idx in split_folds(num, num_folds, **kwargs)]


def _target(t) -> Target:
    return t if isinstance(t, Target) else as_target(t)


def directional_scales(target, directions) -> np.ndarray:
    """``u_iᵀ Σ u_i`` for ``(k, m, n)`` directions, as per-sample products ``E[⟨G, U_i⟩²]``.

    Raises:
        NonFiniteError: a direction holds NaN/Inf (the message names the first).
    """
    t = _target(target)
    check_finite(directions, "directions", "direction")
    u = jnp.asarray(directions, t.dtype)
    if u.ndim != 3 or tuple(u.shape[1:]) != tuple(t.matrix_shape):
        raise ValueError(
            f"directions must be (k, m, n) = (k, {t.matrix_shape[0]}, {t.matrix_shape[1]}); "
            f"got {u.shape}"
        )
    if isinstance(t, DampedTarget):
        base = directional_scales(t.base, u)
        return base + t.damping * np.asarray(jnp.sum(u * u, axis=(1, 2)), np.float64)
    flat = u.reshape(u.shape[0], -1)
    if isinstance(t, DenseTarget):
        return np.asarray(jnp.einsum("ki,ij,kj->k", flat, t.to_dense(), flat), np.float64)
    if not isinstance(t, SampleTarget):
        raise TypeError(f"directional scales need a SampleTarget or DenseTarget; got {type(t)}")
    out = jnp.zeros(u.shape[0], t.dtype)
    for _, g, w in t.chunks():
        p = g.reshape(g.shape[0], -1) @ flat.T
        out = out + w @ (p * p)
    return np.asarray(out, np.float64)


def source_directions(source, num_directions: int | None = None):
    """The leading ``(λ_i, U_i)`` of a fold (descending; from the Gram matrix).

    Returns:
        ``(values (k,), vectors (k, m, n))``.
    """
    if num_directions is not None:
        check_number(num_directions, "num_directions", low=1, integer=True)
    spec = _target(source).eigh(vectors=True)
    k = spec.rank if num_directions is None else min(int(num_directions), spec.rank)
    return np.asarray(spec.values[:k], np.float64), spec.vectors[:k]


def _direction_coords(values, name="source_eigenvalue"):
    return {"direction": np.arange(len(values)), name: ("direction", np.asarray(values))}


def heldout_scale_error(source, heldout, num_directions: int | None = None) -> xr.DataArray:
    """Held-out scale error ``ξ_i = log10(u_iᵀ C' u_i / λ_i)`` along the source eigenvectors.

    Args:
        source: the source fold (Target or samples), giving ``(λ_i, u_i)``.
        heldout: one held-out fold or a list of them (disjoint from the source).
        num_directions: keep the leading ``k`` directions (default: all non-zero).

    Returns:
        DataArray ``(fold, direction)`` with coordinate ``source_eigenvalue``.
    """
    folds = heldout if isinstance(heldout, (list, tuple)) else [heldout]
    if not folds:
        raise ValueError("heldout is an empty list: give at least one held-out fold")
    values, vectors = source_directions(source, num_directions)
    xi = np.stack([np.log10(directional_scales(h, vectors) / values) for h in folds])
    return xr.DataArray(
        xi,
        dims=("fold", "direction"),
        coords={"fold": np.arange(len(folds)), **_direction_coords(values)},
        name="heldout_scale_error",
        attrs={"long_name": "held-out scale error ξ", "units": "log10"},
    )


def inverse_quadratic(approx: Structure, directions, approx_damping: float = 0.0) -> np.ndarray:
    """``u_iᵀ (S + μI)⁻¹ u_i`` for ``(k, m, n)`` directions, through ``S``'s eigen form.

    Raises:
        ValueError: ``approx_damping`` is not a finite number ≥ 0, or ``S + μI`` is not
            positive definite.
        NonFiniteError: a direction holds NaN/Inf.
    """
    approx_damping = check_number(approx_damping, "approx_damping", low=0.0)
    check_finite(directions, "directions", "direction")
    e = approx.eigen()
    d = np.asarray(e.values, np.float64) + approx_damping
    if np.min(d) <= 0:
        raise ValueError(
            f"the approximation is not positive definite (smallest eigenvalue {np.min(d):.3e});"
            " its inverse gains are undefined — pass approx_damping > 0"
        )
    u = jnp.asarray(directions, e.values.dtype)
    if isinstance(e, Diagonal):
        rot = u
    else:
        rot = jnp.einsum("ai,kab,bj->kij", e.left_basis, u, e.right_basis)
    return np.asarray(jnp.sum(rot * rot / d, axis=(1, 2)), np.float64)


def heldout_gain_error(
    source,
    heldout,
    approx: Structure,
    *,
    exponent: float = -0.5,
    num_directions: int | None = None,
    approx_damping: float = 0.0,
) -> xr.DataArray:
    """Held-out gain error ``e_i = p · log10(s_i / h_i)`` of a fit along source directions.

    ``h_i`` is the mean held-out scale ``u_iᵀ C' u_i`` over the held-out folds and
    ``s_i = 1/(u_iᵀ (S+μI)⁻¹ u_i)`` the fit's scale along ``u_i`` (exact for an
    eigenvector of ``S``); ``p`` is the preconditioner's power (``−½``: the gain
    ``S^{-1/2}``, and then ``e_i = ½ log10(h_i u_iᵀ S⁻¹ u_i)``).

    Returns:
        DataArray ``(direction,)`` with coordinates ``source_eigenvalue`` and
        ``heldout_scale`` (``h_i``).
    """
    approx_damping = check_number(approx_damping, "approx_damping", low=0.0)
    exponent = check_number(exponent, "exponent")
    folds = heldout if isinstance(heldout, (list, tuple)) else [heldout]
    if not folds:
        raise ValueError("heldout is an empty list: give at least one held-out fold")
    values, vectors = source_directions(source, num_directions)
    h = np.mean([directional_scales(f, vectors) for f in folds], axis=0)
    fitted = 1.0 / inverse_quadratic(approx, vectors, approx_damping)
    e = float(exponent) * np.log10(fitted / h)
    return xr.DataArray(
        e,
        dims=("direction",),
        coords={**_direction_coords(values), "heldout_scale": ("direction", h)},
        name="heldout_gain_error",
        attrs={"long_name": "held-out gain error e", "units": "log10", "exponent": exponent},
    )


def _kron_eigen(reference: Structure):
    """Eigenpairs of a Kronecker-structured ``S_ref``: ``(ω, left index, right index)``."""
    e = reference.eigen()
    if isinstance(e, Diagonal):
        raise TypeError("recovery error and overlap need a Kronecker-structured reference")
    values = np.asarray(e.values, np.float64)
    order = np.argsort(values.ravel())[::-1]
    rows, cols = np.unravel_index(order, values.shape)
    return e, values.ravel()[order], rows, cols


def recovery_error(
    approx: Structure,
    reference: Structure,
    *,
    exponent: float = -0.5,
    num_directions: int | None = None,
    approx_damping: float = 0.0,
) -> xr.DataArray:
    """Recovery error ``γ_j = p · log10((1/v_jᵀ Ŝ⁻¹ v_j) / ω_j)`` of ``Ŝ`` against ``S_ref``.

    ``(ω_j, v_j)`` are the eigenpairs of the (Kronecker) reference fit in descending
    order, ``v_j = a_j ⊗ b_j``; ``p = −½`` gives the paper's ``½ log10(ω_j v_jᵀ Ŝ⁻¹ v_j)``.
    ``v_jᵀ Ŝ⁻¹ v_j`` costs no ``mn × mn`` matrix: with ``Ŝ = Q̂ diag(D̂) Q̂ᵀ`` it is
    ``Σ_kl (Q̂aᵀa_j)_k² (Q̂bᵀb_j)_l² / D̂_kl``.

    Returns:
        DataArray ``(direction,)`` with coordinate ``reference_eigenvalue``.
    """
    e_ref, omega, rows, cols = _kron_eigen(reference)
    k = len(omega) if num_directions is None else min(int(num_directions), len(omega))
    e_hat = approx.eigen()
    d = np.asarray(e_hat.values, np.float64) + approx_damping
    if np.min(d) <= 0:
        raise ValueError(
            f"the fit is not positive definite (smallest eigenvalue {np.min(d):.3e}); pass "
            "approx_damping > 0"
        )
    if isinstance(e_hat, Diagonal):
        pa = np.asarray(e_ref.left_basis, np.float64) ** 2  # (m, m): [k, i] = a_i[k]²
        pb = np.asarray(e_ref.right_basis, np.float64) ** 2
    else:
        pa = np.asarray(e_hat.left_basis.T @ e_ref.left_basis, np.float64) ** 2
        pb = np.asarray(e_hat.right_basis.T @ e_ref.right_basis, np.float64) ** 2
    quad = pa.T @ (1.0 / d) @ pb  # [i, j] = v_ijᵀ Ŝ⁻¹ v_ij
    q = quad[rows[:k], cols[:k]]
    gamma = float(exponent) * np.log10(1.0 / (q * omega[:k]))
    return xr.DataArray(
        gamma,
        dims=("direction",),
        coords={"direction": np.arange(k), "reference_eigenvalue": ("direction", omega[:k])},
        name="recovery_error",
        attrs={"long_name": "recovery error γ", "units": "log10", "exponent": exponent},
    )


def subspace_overlap(target, approx: Structure, k_max: int | None = None) -> xr.DataArray:
    """``O(k) = ‖U_kᵀ V_k‖²_F / k``: leading eigenvectors of a target vs of a Kronecker fit.

    ``U_k`` are the target's leading ``k`` eigenvectors (from its Gram matrix), ``V_k``
    the fit's (``a ⊗ b`` by descending eigenvalue); ``(U_kᵀV_k)_{ij} = a_jᵀ U_i b_j``.

    Returns:
        DataArray ``(k,)`` for ``k = 1 … k_max`` (default: the target's rank).
    """
    if k_max is not None:
        check_number(k_max, "k_max", low=1, integer=True)
    values, vectors = source_directions(target, k_max)
    k = len(values)
    e, _, rows, cols = _kron_eigen(approx)
    rot = jnp.einsum("ai,kab,bj->kij", e.left_basis, jnp.asarray(vectors), e.right_basis)
    m = np.asarray(rot, np.float64)[:, rows[:k], cols[:k]] ** 2  # (k, k): [i, j] = ⟨u_i, v_j⟩²
    cum = np.cumsum(np.cumsum(m, axis=0), axis=1)
    ks = np.arange(1, k + 1)
    return xr.DataArray(
        cum[ks - 1, ks - 1] / ks,
        dims=("k",),
        coords={"k": ks},
        name="subspace_overlap",
        attrs={"long_name": "subspace overlap O(k)"},
    )


def flat_tail_errors(
    target,
    ranks=None,
    *,
    damping: float = 0.0,
    fit: Kronecker | None = None,
    exponent: float = -0.5,
    num_directions: int | None = None,
    multiple: float = 3.0,
    **kl_kwargs,
) -> xr.Dataset:
    """What keeping ``kl_optimal``'s factors as rank ``r`` + a flat tail costs, against ``r``.

    For each ``r`` the fit ``S = L ⊗ R`` (``kl_optimal`` on ``Σ + λI``, or ``fit``) is
    restricted by ``estimators.flat_tail(S, r)`` (both factors, ``r`` clipped to each
    side) and scored against the target and against ``S`` itself:

    * ``kl``: ``KL(N(0, Σ+λI) ‖ N(0, S_r))`` (``metrics.kl_divergence``, the objective of
      ``kl_optimal``); ``kl_excess = kl − KL(Σ+λI ‖ S)`` ≥ 0 (``S`` is the KL minimiser
      over all Kronecker products) and ``kl_excess_relative = kl_excess / KL(Σ+λI ‖ S)``;
    * ``gain_error_max`` / ``gain_error_rms``: the max |γ_j| and root mean square of the
      recovery error ``γ_j = p · log10((1/v_jᵀ S_r⁻¹ v_j) / ω_j)`` over the eigenpairs
      ``(ω_j, v_j)`` of ``S`` (``recovery_error``; P4's gain error with the unrestricted fit
      as reference, ``p = exponent``).

    At ``r ≥ max(m, n) − 1`` the restriction is the identity and every error is 0.

    Args:
        target: per-example matrices, a DataArray or a Target.
        ranks: the ``r`` values (default ``0 … max(m, n)``).
        damping: ``λ`` of the fit and of the KL.
        fit: the unrestricted ``Kronecker`` fit (default ``kl_optimal(target,
            damping=damping, **kl_kwargs)``).
        exponent: the preconditioner power ``p`` of the gain error.
        num_directions: leading eigenpairs of ``S`` for the gain error (default all).
        multiple: the spike rule of ``estimators.spike_profile`` for the attrs.
        **kl_kwargs: forwarded to ``kl_optimal``.

    Returns:
        A Dataset over ``rank`` with ``kl``, ``kl_excess``, ``kl_excess_relative``,
        ``gain_error_max``, ``gain_error_rms``, ``left_rank``, ``right_rank`` (after
        clipping); attrs ``kl_full``, ``damping``, and each factor's spike count and tail
        coefficient of variation (``left_spikes``, ``left_tail_cv``, …).
    """
    t = as_target(target)
    if fit is None:
        fit = est.kl_optimal(t, damping=damping, **kl_kwargs)
    elif kl_kwargs:
        raise TypeError(f"options {sorted(kl_kwargs)} fit the KL fit; a given fit takes none")
    if not isinstance(fit, Kronecker):
        raise TypeError(f"fit must be a Kronecker (e.g. kl_optimal's); got {type(fit).__name__}")
    m, n = fit.matrix_shape
    if ranks is None:
        ranks = range(max(m, n) + 1)
    ranks = [int(check_number(r, "rank", low=0, integer=True)) for r in ranks]
    if not ranks:
        raise ValueError("ranks is empty: give at least one rank (or None for 0 … max(m, n))")
    kl_full = float(met.kl_divergence(t, fit, damping=damping))
    rows = []
    for r in ranks:
        restricted = est.flat_tail(fit, r)
        kl = (
            kl_full
            if restricted is fit
            else float(met.kl_divergence(t, restricted, damping=damping))
        )
        gamma = np.asarray(
            recovery_error(restricted, fit, exponent=exponent, num_directions=num_directions)
        )
        rows.append(
            (
                kl,
                kl - kl_full,
                (kl - kl_full) / kl_full if kl_full > 0 else np.nan,
                float(np.max(np.abs(gamma))),
                float(np.sqrt(np.mean(gamma**2))),
                min(r, m),
                min(r, n),
            )
        )
    cols = list(zip(*rows, strict=True))
    names = (
        "kl",
        "kl_excess",
        "kl_excess_relative",
        "gain_error_max",
        "gain_error_rms",
        "left_rank",
        "right_rank",
    )
    data = {
        name: ("rank", np.asarray(col, np.int64 if name.endswith("_rank") else np.float64))
        for name, col in zip(names, cols, strict=True)
    }
    attrs = {"kl_full": kl_full, "damping": float(damping), "exponent": float(exponent)}
    for side, factor in (("left", fit.left), ("right", fit.right)):
        prof = est.spike_profile(factor, multiple=multiple)
        attrs |= {f"{side}_spikes": prof.spikes, f"{side}_tail_cv": prof.tail_cv}
    attrs["spike_multiple"] = float(multiple)
    return xr.Dataset(data, coords={"rank": np.asarray(ranks, np.int64)}, attrs=attrs)


_PARTS = ("leading", "tail")


def _bases(e):
    """The Kronecker eigenbasis ``(Qa, Qb)`` of an eigen form (identities for a Diagonal)."""
    if isinstance(e, Diagonal):
        m, n = e.values.shape
        return jnp.eye(m, dtype=e.values.dtype), jnp.eye(n, dtype=e.values.dtype)
    return e.left_basis, e.right_basis


def _check_structures(base, donor) -> None:
    for name, s in (("base", base), ("donor", donor)):
        if not isinstance(s, Structure):
            raise TypeError(
                f"{name} must be a structure (e.g. the Kronecker fit of kl_optimal or "
                f"bregman_optimal); got {type(s).__name__}"
            )
    if base.matrix_shape != donor.matrix_shape:
        raise ValueError(
            f"base and donor must approximate the same matrix: matrix_shape {base.matrix_shape}"
            f" vs {donor.matrix_shape} (fit both on the same layer's gradients)"
        )


def eigen_gains(base: Structure, donor: Structure) -> jax.Array:
    """``u_ijᵀ S_d⁻¹ u_ij`` along the eigenvectors ``u_ij = a_i ⊗ b_j`` of ``base``.

    With the donor's eigen form ``(P_a ⊗ P_b) diag(μ) (P_a ⊗ P_b)ᵀ``, ``A = P_aᵀ Q_a`` and
    ``B = P_bᵀ Q_b``: ``gains = (A∘A)ᵀ (1/μ) (B∘B)`` (an ``(m, n)`` array laid out like
    ``base.eigen().values``). Never forms an ``mn × mn`` matrix; jittable (the host checks
    are skipped for traced values). ``donor = base`` gives ``1/values``.

    Raises:
        TypeError: base or donor is not a structure.
        ValueError: different ``matrix_shape``, or a donor eigenvalue ≤ 0 (its gains are
            undefined: damp the donor's fit).
    """
    _check_structures(base, donor)
    eb, ed = base.eigen(), donor.eigen()
    qa, qb = _bases(eb)
    pa, pb = _bases(ed)
    mu = ed.values
    if not isinstance(mu, jax.core.Tracer):
        low = float(jnp.min(mu))
        if not low > 0:
            raise ValueError(
                f"donor is not positive definite (smallest eigenvalue {low:.3e}): its gains "
                "u^T S^-1 u are undefined; fit it with damping > 0 (e.g. "
                "bregman_optimal(..., damping=1e-3 * trace / (m * n)))"
            )
    a = pa.T @ qa
    b = pb.T @ qb
    return (a * a).T @ (1.0 / mu) @ (b * b)


def swap_gains(
    base: Structure, donor: Structure, part: str = "leading", fraction: float = 0.5
) -> EigenKronecker:
    """``base`` with the gains of its leading (or tail) eigen-directions taken from ``donor``.

    The gain of a fit ``S`` along a unit direction ``u`` is ``uᵀ S⁻¹ u`` (P4's gain; the
    preconditioner ``S^p`` of power ``p`` has gain ``(uᵀS⁻¹u)^{−p}`` along an eigenvector).
    In the Kronecker eigenbasis ``u_ij = a_i ⊗ b_j`` of ``base`` (eigenvalues ``λ_ij``, the
    products of the factors' eigenvalues), the ``k = round(fraction·mn)`` directions of
    largest ``λ`` are the *leading* ones and the rest the *tail*. The result keeps
    ``base``'s eigenvectors and eigenvalues, except that the chosen part's eigenvalues
    become ``1 / (u_ijᵀ S_d⁻¹ u_ij)`` (``eigen_gains``): along those directions it has the
    donor's gains. Ties in ``λ`` are broken by the row-major index. Jittable.

    Args:
        base: the fit whose eigenvectors are kept (e.g. ``kl_optimal``'s ``L ⊗ R``).
        donor: the fit whose gains replace them (e.g. ``bregman_optimal(q=2)``), positive
            definite.
        part: ``"leading"`` (the top ``k`` directions by ``λ``) or ``"tail"`` (the other
            ``mn − k``).
        fraction: ``k/mn`` in (0, 1]; ``1`` with ``"leading"`` replaces every gain.

    Returns:
        An ``EigenKronecker`` in ``base``'s eigenbasis (``mn`` numbers of eigenvalues).

    Raises:
        TypeError: base or donor is not a structure.
        ValueError: a bad ``part`` or ``fraction`` (e.g. a fraction that leaves no direction
            in the chosen part), different shapes, or a donor that is not positive definite.
    """
    if part not in _PARTS:
        raise ValueError(f"part must be 'leading' or 'tail'; got {part!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)):
        raise TypeError(f"fraction must be a number in (0, 1], e.g. 0.5; got {fraction!r}")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction must be in (0, 1] (the share of directions); got {fraction}")
    _check_structures(base, donor)
    m, n = base.matrix_shape
    k = int(round(float(fraction) * m * n))
    if (part == "leading" and k < 1) or (part == "tail" and k >= m * n):
        raise ValueError(
            f"fraction={fraction} leaves no {part} direction of the {m * n} "
            f"(k = round(fraction·mn) = {k}): choose a fraction in "
            f"[{0.5 / (m * n):.2g}, {1 - 0.5 / (m * n):.4g})"
        )
    eb = base.eigen()
    gains = eigen_gains(base, donor)
    values = eb.values.reshape(-1)
    order = jnp.argsort(-values, stable=True)
    rank = jnp.zeros(m * n, jnp.int32).at[order].set(jnp.arange(m * n, dtype=jnp.int32))
    chosen = rank < k if part == "leading" else rank >= k
    new = jnp.where(chosen, 1.0 / gains.reshape(-1), values).reshape(m, n)
    qa, qb = _bases(eb)
    return EigenKronecker(qa, qb, new, validate=False)


def minibatch_means(samples, batch: int) -> np.ndarray:
    """Means of consecutive groups of ``batch`` per-example gradients (remainder dropped):
    ``(N, m, n)`` → ``(N // batch, m, n)`` float64 mini-batch gradients, in sample order."""
    batch = int(check_number(batch, "batch", low=1, integer=True))
    g = np.asarray(samples, np.float64)
    if g.ndim != 3 or len(g) < batch:
        raise ValueError(f"samples must be (N, m, n) with N ≥ batch {batch}; got {g.shape}")
    nb = len(g) // batch
    return g[: nb * batch].reshape(nb, batch, *g.shape[1:]).mean(axis=1)


def disjoint_blocks(num_samples: int, length: int, max_blocks: int | None = None) -> list:
    """Consecutive, disjoint index blocks ``[k·length, (k+1)·length)`` of ``range(num)``.

    The repeats of a chronological (stream-order) protocol: no sample is in two blocks.

    Raises:
        ValueError: ``length`` < 1, ``max_blocks`` < 1, or not one block fits.
    """
    length = int(check_number(length, "length", low=1, integer=True))
    count = int(num_samples) // length
    if max_blocks is not None:
        count = min(count, int(check_number(max_blocks, "max_blocks", low=1, integer=True)))
    if count < 1:
        raise ValueError(f"{num_samples} samples cannot fill one block of length {length}")
    return [np.arange(k * length, (k + 1) * length) for k in range(count)]


def crossfit_scale_error(
    source, heldout_a, heldout_b, num_directions: int | None = None
) -> xr.DataArray:
    """Cross-fit control of ``heldout_scale_error``: ``ξ^cf_i = log10(u_iᵀC_a u_i / u_iᵀC_b u_i)``.

    ``u_i`` are the source's eigenvectors; ``C_a``, ``C_b`` two sample sets of the *same*
    distribution, both independent of the source (e.g. two halves of the held-out data).
    Neither selected ``u_i``, so ``ξ^cf ≈ 0`` up to sampling noise: a held-out ``ξ`` far
    above ``ξ^cf`` is the source's own sampling error, not a shift between folds.

    Returns:
        DataArray ``(direction,)`` with coordinate ``source_eigenvalue``.
    """
    values, vectors = source_directions(source, num_directions)
    a = directional_scales(heldout_a, vectors)
    b = directional_scales(heldout_b, vectors)
    return xr.DataArray(
        np.log10(a / b),
        dims=("direction",),
        coords=_direction_coords(values),
        name="crossfit_scale_error",
        attrs={"long_name": "cross-fit scale error ξ^cf", "units": "log10"},
    )


def spectrum_log_ratio(target, approx: Structure, damping: float = 0.0) -> xr.DataArray:
    """``log10(s_(i) / (λ_(i) + μ))``: the fit's sorted spectrum against the target's.

    ``s_(i)`` and ``λ_(i)`` are the ``i``-th largest eigenvalues of the fit ``S`` and of
    the target's second moment (P4's Fig. 5 compares the two sorted spectra, not values
    along shared eigenvectors); ``μ`` (``damping``) is added to the target's when the fit
    was made to ``Σ + μI``. Positive: the fit over-estimates the ``i``-th eigenvalue.

    Returns:
        DataArray ``(direction,)`` over the target's nonzero eigenvalues, with coordinates
        ``source_eigenvalue`` and ``fitted_eigenvalue``.
    """
    damping = check_number(damping, "damping", low=0.0)
    values, _ = source_directions(target)
    fitted = np.sort(np.asarray(approx.eigen().values, np.float64).ravel())[::-1][: len(values)]
    if np.min(fitted) <= 0:
        raise ValueError(
            f"the fit is not positive definite (smallest eigenvalue {np.min(fitted):.3e})"
        )
    return xr.DataArray(
        np.log10(fitted / (values[: len(fitted)] + damping)),
        dims=("direction",),
        coords={
            **_direction_coords(values[: len(fitted)]),
            "fitted_eigenvalue": ("direction", fitted),
        },
        name="spectrum_log_ratio",
        attrs={"long_name": "log10(sorted fit / sorted target eigenvalue)", "damping": damping},
    )


def fit_errors(source, heldout, approx: Structure, reference: Structure) -> tuple[float, float]:
    """``(median_i |e_i|, median_j |γ_j|)``: P4's Table 2 and 3 entries for one fit.

    ``e`` is ``heldout_gain_error(source, heldout, approx)`` and ``γ``
    ``recovery_error(approx, reference)`` (its own large-sample fit as reference).
    """
    e = heldout_gain_error(source, heldout, approx)
    g = recovery_error(approx, reference)
    return float(np.median(np.abs(e.values))), float(np.median(np.abs(g.values)))


def fold_scale_errors(samples, folds) -> xr.Dataset:
    """``heldout_scale_error`` with each fold as the source, and its cross-fit control.

    For source fold ``s``: ``ξ`` along its eigenvectors, averaged over the other folds, and
    ``ξ^cf`` (``crossfit_scale_error``) between the two halves (alternate samples) of the
    other folds pooled: same distribution, both independent of the source.

    Args:
        samples: ``(N, m, n)`` samples; folds: index arrays (``split_folds``).

    Returns:
        Dataset ``(source, direction)`` with ``heldout_scale_error`` and
        ``crossfit_scale_error``, NaN past a fold's rank (``direction`` runs to ``mn``).
    """
    g = np.asarray(samples)
    if len(folds) < 2:
        raise ValueError(f"fold_scale_errors needs ≥ 2 folds; got {len(folds)}")
    d = int(np.prod(g.shape[1:]))
    targets = [SampleTarget(g[i]) for i in folds]
    xi, cf = np.full((len(folds), d), np.nan), np.full((len(folds), d), np.nan)
    for s, source in enumerate(targets):
        rest = [t for i, t in enumerate(targets) if i != s]
        pooled = np.concatenate([g[f] for i, f in enumerate(folds) if i != s])
        x = heldout_scale_error(source, rest).mean("fold").values
        c = crossfit_scale_error(source, pooled[0::2], pooled[1::2]).values
        xi[s, : len(x)], cf[s, : len(c)] = x, c
    dims = ("source", "direction")
    return xr.Dataset(
        {"heldout_scale_error": (dims, xi), "crossfit_scale_error": (dims, cf)},
        coords={"source": np.arange(len(folds)), "direction": np.arange(d)},
    )


def trace_power_fit_errors(
    source,
    heldout,
    q: float,
    *,
    damping: float = 0.0,
    few: int = 40,
    few_repeats: int = 4,
    ema_length: int = 64,
    ema_blocks: int = 8,
    ema_beta: float = 0.95,
    ema_frequency: int = 5,
    seed: int = 0,
    tol: float = 1e-8,
    max_iter: int = 1000,
) -> xr.Dataset:
    """P4's held-out protocol (§5, Tables 2–3, Fig. 5) for one trace power ``q``.

    On the source fold (``(N, m, n)`` samples, in stream order): the large-sample fit
    ``bregman_optimal(source, q)``; ``few_repeats`` fits on ``few`` random samples of it;
    EMA fits (``online.bregman_shampoo``, ``online.fit_stream``) on ``ema_blocks`` disjoint
    consecutive blocks of ``ema_length`` (``disjoint_blocks``); every fit with ``damping``.

    Returns:
        Dataset: over ``direction`` (``mn``, NaN-padded) the large-sample fit's
        ``gain_error_large`` (``heldout_gain_error``), ``spectrum_log_ratio`` and
        ``subspace_overlap`` (``O(k)`` at ``k = direction + 1``); ``few_error``
        ``(metric, few_repeat)`` and ``ema_error`` ``(metric, ema_repeat)``: median |e|
        (``metric="gain"``) and median |γ| against the large-sample fit (``"recovery"``).
    """
    from . import online

    src = np.asarray(source, np.float64)
    check_number(few, "few", low=1, high=len(src), integer=True)
    check_number(few_repeats, "few_repeats", low=1, integer=True)
    opts = dict(damping=damping, tol=tol, max_iter=max_iter)
    t0, held = (
        SampleTarget(src),
        [_target(h) for h in (heldout if isinstance(heldout, (list, tuple)) else [heldout])],
    )
    large = est.bregman_optimal(t0, q, **opts)
    rng = np.random.default_rng(seed)
    subsets = [rng.choice(len(src), int(few), replace=False) for _ in range(int(few_repeats))]
    fews = [est.bregman_optimal(src[i], q, **opts) for i in subsets]
    o = online.bregman_shampoo(
        q, shampoo_beta=ema_beta, frequency=ema_frequency, clamp=False, damping=damping
    )
    emas = [online.fit_stream(o, src[b]) for b in disjoint_blocks(len(src), ema_length, ema_blocks)]
    d = int(np.prod(src.shape[1:]))

    def padded(x):
        out = np.full(d, np.nan)
        out[: len(x)] = np.asarray(x)[:d]
        return out

    _, vectors = source_directions(t0)  # once: the source's directions and held-out scales
    h = np.mean([directional_scales(f, vectors) for f in held], axis=0)

    def gain(fit):  # heldout_gain_error with p = −½
        return 0.5 * np.log10(h * inverse_quadratic(fit, vectors))

    def errors(fits):
        return np.array([(np.median(np.abs(gain(f))), np.median(np.abs(recovery_error(f, large))))
                         for f in fits]).T  # fmt: skip

    data = {
        "gain_error_large": gain(large),
        "spectrum_log_ratio": spectrum_log_ratio(t0, large, damping).values,
        "subspace_overlap": subspace_overlap(t0, large).values,
    }
    return xr.Dataset(
        {k: ("direction", padded(v)) for k, v in data.items()}
        | {
            "few_error": (("metric", "few_repeat"), errors(fews)),
            "ema_error": (("metric", "ema_repeat"), errors(emas)),
        },
        coords={"direction": np.arange(d), "metric": ["gain", "recovery"]},
        attrs={"q": float(q), "damping": float(damping)},
    )
