"""Root vs root-free preconditioners on real gradients (P2, Lin et al. 2024).

Claims (``docs/claims.md``; all proxies: one step of a small digits MLP, not training):

* **P2-27** — the batch-size factor ``B`` and ``s₀ = 1`` are essential: fed mini-batch
  means of size ``B`` of the *real-label* gradients (what P2's optimisers see; sampled labels
  are reported beside), RF-RMSProp's ``s`` (and IF-Shampoo's factors) should settle at a
  level independent of ``B`` with the ``B`` scaling; without it the effective step
  ``∝ 1/s`` grows with ``B``. With ``s₀ = 0`` the first steps blow up (≈ ``1/β₂`` × the
  stationary step); ``s₀ = 1`` starts small. Each stream is repeated over several seeds.
* **P2-28** — second-order view: with Kronecker statistics ``S`` of the gradients, the
  root-free step ``S⁻¹g`` of a real-label mini-batch gradient is closer to the Newton-like
  ``(H + λI)⁻¹g`` — ``H`` the layer's exact Gauss–Newton matrix — than the root step
  ``S^{-1/2}g`` is. (The loss-rescaling response is measured too; its exact form is P2-42 in
  the identities study.)
* **P2-29** — preconditioner invariance: IF-Shampoo's multiplicative, inverse-free update
  accepts other curvature (here K-FAC's ``E[δδᵀ]``, ``E[aaᵀ]``) and reaches that curvature's
  damped Kronecker inverse (a fixed-point check, not a training run).
* **P2-30** — IF-Shampoo's inverse is stable in bfloat16, Shampoo's root-inverse is not:
  the precision harness on synthetic SPD spectra and on real Shampoo factors ``L, R``.
* **P2-31** — root-free matrix methods are fast in half precision: one IF-Shampoo update
  with bfloat16 matmuls vs one float32 eigendecomposition at the same size, timed by
  :func:`precond_lab.timing.interleaved` (warm-up excluded, rotated rounds, median and
  quartiles). On a CPU (no bf16 units) the claim is not testable: the numbers are context.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from precond_lab import schema, study, timing
from precond_lab.claims import TestKind, claim
from precond_lab.errors import Status
from precond_lab.linalg import STATUS_CODES
from precond_lab.provenance import make_attrs
from precond_lab.study import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_TESTABLE_HERE,
    PARTIAL,
    Row,
    claim_verdict,
    judge,
)
from studies._setups import Capture

NAME = "root_vs_rootfree"
TITLE = "Root vs root-free preconditioners: B-scaling, Newton view, bf16 stability, speed (P2)"
PAPER = claim("P2-27").paper_label  # "P2 Lin et al. 2024", from the claims registry

PREC_METHODS = ("eigh", "eigh@float32", "newton", "newton_schulz", "if_shampoo")
PREC_DTYPES = ("float32", "bfloat16", "float16")
PREC_PS = (0.25, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class Precision:
    """The P2-30 precision harness runs (synthetic spectra; real factors share ``dims``).

    Attributes:
        conds: condition numbers of the synthetic SPD matrices.
        dims: their sizes (real Shampoo factors of these sizes are measured too).
        repeats: random matrices per (cond, dim).
        dtypes: dtypes measured.
        ps: powers ``p`` of ``(S + λI)^{-p}``.
    """

    conds: tuple[float, ...]
    dims: tuple[int, ...]
    repeats: int
    dtypes: tuple[str, ...] = PREC_DTYPES
    ps: tuple[float, ...] = PREC_PS


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """One run of the study.

    Attributes:
        capture: the captured run.
        capture_step: the captured step measured.
        layers: the layers measured (B and s₀ responses on the first only).
        batch_sizes: mini-batch sizes ``B`` of the P2-27 responses.
        response_steps: stream length of the B and s₀ responses.
        direction_batches: mini-batch gradients per layer for P2-28's directions.
        direction_batch: their batch size.
        precision: the P2-30 harness runs.
        timing_sizes: sizes of the P2-31 timings.
        timing_repeats: interleaved timing rounds (≥ 5: median and quartiles).
        kfac_steps: IF-Shampoo steps driven by K-FAC factors (P2-29).
        damping_rel: ``λ = damping_rel·E‖G‖²/(mn)`` per layer.
        init_batch: ``B`` of the s₀ response.
        init_beta2: ``β₂`` of the s₀ response.
        loss_scales: the loss scales ``c`` of P2-28's scaling check.
        stream_seeds: seeds of the P2-27 mini-batch streams (the spread over them is shown).
    """

    capture: Capture
    capture_step: int
    layers: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    response_steps: int
    direction_batches: int
    direction_batch: int
    precision: Precision
    timing_sizes: tuple[int, ...]
    timing_repeats: int
    kfac_steps: int
    damping_rel: float = 1e-3
    init_batch: int = 16
    init_beta2: float = 0.01
    loss_scales: tuple[float, ...] = (0.1, 10.0)
    stream_seeds: tuple[int, ...] = (0, 1, 2)


_TARGETS = ("gradients", "ggn", "ggn-mc", "kfac")
PRESETS = {
    "test": Config(
        capture=Capture("mlp", "digits", (20,), 64, _TARGETS, mc_samples=2),
        capture_step=20,
        layers=("layers/1/w",),
        batch_sizes=(1, 8),
        response_steps=40,
        direction_batches=4,
        direction_batch=8,
        precision=Precision(
            conds=(1e2, 1e5), dims=(10,), repeats=1, dtypes=("float32", "bfloat16"), ps=(0.25, 1.0)
        ),
        timing_sizes=(16, 32),
        timing_repeats=5,
        kfac_steps=100,
        stream_seeds=(0, 1),
    ),
    "quick": Config(
        capture=Capture("mlp", "digits", (100,), 512, _TARGETS, mc_samples=4),
        capture_step=100,
        layers=("layers/1/w", "layers/0/w"),
        batch_sizes=(1, 4, 16, 64),
        response_steps=300,
        direction_batches=16,
        direction_batch=32,
        precision=Precision(conds=(1e1, 1e3, 1e5), dims=(32,), repeats=3),
        timing_sizes=(128, 256, 512),
        timing_repeats=7,
        kfac_steps=400,
    ),
    "full": Config(
        capture=Capture(
            "mlp",
            "mnist",
            (500,),
            2048,
            _TARGETS,
            mc_samples=4,
            model_options=(("hidden", (128,)),),
        ),
        capture_step=500,
        layers=("layers/1/w", "layers/0/w"),
        batch_sizes=(1, 4, 16, 64, 256),
        response_steps=1000,
        direction_batches=32,
        direction_batch=64,
        precision=Precision(conds=(1e1, 1e3, 1e5, 1e7), dims=(32, 64, 128, 256, 1024), repeats=3),
        timing_sizes=(512, 1024, 2048, 4096),
        timing_repeats=9,
        kfac_steps=1000,
    ),
}

# Thresholds (restated in each verdict's tolerance).
P227_FLAT = 2.0  # with B: level ratio across B within [1/2, 2] (real labels)
P227_BLOWUP = 5.0  # s0=0: early max step ≥ 5× the late median step
P227_CALM = 1.5  # s0=1: early max step ≤ 1.5× the late median step
P228_SCALE_TOL = 0.05  # |norm ratio / c^{1-2p} − 1| ≤ 5 % (reported only)
P229_COS = 0.99  # IF-Shampoo(K-FAC) vs damped K-FAC: cosine of the inverses ≥ 0.99
P230_FAIL = 0.1  # IF-Shampoo bf16 failure rate ≤ 10 %
P230_GAP = 0.2  # Shampoo root-inverse (best bf16 matmul method) fails ≥ 20 points more,
P230_ERR = 3.0  # ... or has ≥ 3× the median error
P230_ERR_OK = 0.1  # a run counts as failed if not converged/finite or error > 0.1
P231_SPEEDUP = 2.0  # eigh f32 ≥ 2× one bf16 IF-Shampoo update at the largest size
#: The timed operations of P2-31 (per size, interleaved).
TIMING_OPS = ("eigh_f32", "if_update_bf16", "if_update_f32", "matmul_bf16", "matmul_f32")

#: Okabe–Ito colour names (precond_lab.plotting.OKABE_ITO), in drawing order.
_COLOURS = ("blue", "vermillion", "bluish_green", "orange", "reddish_purple", "sky_blue", "black")


# ------------------------------------------------------------------------------ helpers
def _layer_arrays(node):
    g = np.asarray(schema.layer_samples(node, schema.Kind.GRADIENTS), np.float32)
    # (N, k, m, n), pre-divided by √k
    mc = np.asarray(schema.layer_samples(node, schema.Kind.GGN_MC), np.float32)
    k = mc.shape[1]
    sampled = (mc * np.sqrt(k)).reshape(-1, *mc.shape[2:])
    acts, backs = schema.layer_kfac_inputs(node, schema.Kind.GRADIENTS)
    ggn, w_ggn = schema.sample_bag(schema.layer_samples(node, schema.Kind.GGN), dtype="float32")
    return (
        g,
        sampled,
        np.asarray(acts, np.float32),
        np.asarray(backs, np.float32),
        (np.asarray(ggn), np.asarray(w_ggn)),
    )


# ------------------------------------------------------------------------------ P2-27
def _if_step_scale(pool, bsz, scale_by_batch, steps, lam, seed):
    """IF-Shampoo fed means of size B; mean eigenvalue of CCᵀ⊗KKᵀ (the step scale)."""
    from precond_lab.online import if_shampoo

    x = jnp.asarray(pool)
    idx = np.random.default_rng(seed).integers(0, x.shape[0], size=(steps, int(bsz)))
    means = x[jnp.asarray(idx)].mean(axis=1)
    b_hp = int(bsz) if scale_by_batch else 1
    est = if_shampoo(beta2=0.1, alpha2=0.5, damping=lam, batch_size=b_hp)
    st = est.init(means[0])
    m, n = x.shape[1:]
    vals = []
    for t in range(1, steps):
        st = est.update(st, means[t])
        if t >= steps // 2:
            c, k = st.c, st.k
            vals.append(float(jnp.sum(c * c) * jnp.sum(k * k)) / (m * n))
    return float(np.mean(vals))


def _batch_section(pools, batch_sizes, steps, lam, seeds):
    """``level[seed, label, method, scaling, B]``: stationary step scale (∝ 1/curvature)."""
    from precond_lab.online import batch_size_response

    out = np.full((len(seeds), len(pools), 2, 2, len(batch_sizes)), np.nan)
    for ks, seed in enumerate(seeds):
        for il, pool in enumerate(pools):
            sd = 100 * int(seed) + il
            for js, scale in enumerate((True, False)):
                lev = batch_size_response(
                    pool, batch_sizes, steps=steps, beta2=0.05, scale_by_batch=scale, seed=sd
                )
                out[ks, il, 0, js] = [1.0 / (lev[int(b)] + lam) for b in batch_sizes]
                out[ks, il, 1, js] = [
                    _if_step_scale(pool, b, scale, steps, lam, seed=sd) for b in batch_sizes
                ]
    return out


def _init_section(pool, steps, bsz, beta2):
    from precond_lab.online import initialisation_response

    x = jnp.asarray(pool)
    idx = np.random.default_rng(7).integers(0, x.shape[0], size=(steps, int(bsz)))
    means = x[jnp.asarray(idx)].mean(axis=1)
    resp = initialisation_response(means, (0.0, 1.0), beta2=beta2, batch_size=int(bsz))
    return np.stack([resp[0.0], resp[1.0]])


# ------------------------------------------------------------------------------ P2-28
def _direction_section(g, ggn, lam, damping_rel, nbatch, bsz, seed):
    """Per-batch ``cos(S^-pa g, (H+λ_H I)^-pe g)`` for KL-optimal and Shampoo² factors ``S``
    of the gradients; ``H`` the exact Gauss–Newton of the same layer (``ggn = (samples,
    weights)``), ``λ_H = damping_rel·tr H/(mn)``; ``g`` real-label mini-batch means.

    Returns:
        ``cos[estimator, approx power, exact power, batch]`` and ``λ_H``.
    """
    from precond_lab import SampleTarget
    from precond_lab.estimators import kl_optimal, shampoo_squared
    from precond_lab.metrics import exact_direction

    target = SampleTarget(jnp.asarray(g))
    newton = SampleTarget(jnp.asarray(ggn[0]), jnp.asarray(ggn[1]))
    m, n = g.shape[1:]
    lam_h = damping_rel * float(newton.trace()) / (m * n)
    spec = newton.eigh(vectors=True)
    kl = kl_optimal(target, damping=lam)  # damping inside its factors
    sh2 = shampoo_squared(target)
    idx = np.random.default_rng(seed).integers(0, g.shape[0], size=(nbatch, bsz))
    grads = jnp.asarray(g[idx].mean(axis=1))
    ps = (0.5, 1.0)
    exact = {pe: exact_direction(newton, grads, p=pe, damping=lam_h, spectrum=spec) for pe in ps}
    cos = np.zeros((2, 2, 2, nbatch))
    for ie, (s, lam_a) in enumerate(((kl, 0.0), (sh2, lam))):
        for ia, pa in enumerate(ps):
            d = s.power(-pa, lam_a).matvec(grads).astype(exact[1.0].dtype)
            for je, pe in enumerate(ps):
                e = exact[pe]
                c = jnp.sum(d * e, axis=(-2, -1)) / (
                    jnp.linalg.norm(d, axis=(-2, -1)) * jnp.linalg.norm(e, axis=(-2, -1))
                )
                cos[ie, ia, je] = np.asarray(c)
    return cos, lam_h


def _rel_damped_shampoo2(x, eps=1e-3):
    """Shampoo² ``(L+εtrL/m·I)⊗(R+εtrR/n·I)/trL``: homogeneous of degree 2 in the samples."""
    from precond_lab.structures import Kronecker

    m, n = x.shape[1:]
    left = jnp.einsum("kij,klj->il", x, x) / x.shape[0]
    right = jnp.einsum("kij,kil->jl", x, x) / x.shape[0]
    tr = jnp.trace(left)
    return Kronecker(
        left + eps * tr / m * jnp.eye(m), right + eps * jnp.trace(right) / n * jnp.eye(n), 1 / tr
    )


def _scaling_section(g, cs):
    from precond_lab.metrics import loss_scaling_response

    x = jnp.asarray(g)
    grad = x[: min(32, x.shape[0])].mean(0)
    out = np.zeros((len(cs), 2, 2))  # (c, p, [ratio, predicted])
    for i, c in enumerate(cs):
        for j, p in enumerate((0.5, 1.0)):
            r = loss_scaling_response(_rel_damped_shampoo2, x, grad, c=c, p=p, damping=0.0)
            out[i, j] = (r["norm_ratio"], r["predicted"])
    return out


# ------------------------------------------------------------------------------ P2-29
def _kfac_if_shampoo(acts, backs, lam, steps, beta2=0.1):
    """IF-Shampoo's multiplicative update driven by K-FAC factors instead of the GOP.

    ``m_C = [tr(KᵀA_inK)·CᵀA_outC + λ tr(KᵀK)·CᵀC − d_i I]/(2d_i)`` (and symmetrically);
    its fixed point is ``(CCᵀ)⁻¹ ⊗ (KKᵀ)⁻¹ = damped K-FAC`` (A.9 with ``E[G KKᵀ Gᵀ]``
    replaced by its K-FAC form ``tr(KᵀA_inK) A_out``). Returns the cosine of
    ``CCᵀ⊗KKᵀ`` with ``(A_out⊗A_in + λ-terms)⁻¹`` computed densely, and the residual.
    """
    a_out = jnp.asarray(backs.T @ backs / backs.shape[0], jnp.float32)
    a_in = jnp.asarray(acts.T @ acts / acts.shape[0], jnp.float32)
    m, n = a_out.shape[0], a_in.shape[0]

    @jax.jit
    def step(c, k):
        tk = jnp.trace(k.T @ a_in @ k)
        tc = jnp.trace(c.T @ a_out @ c)
        mc = (tk * c.T @ a_out @ c + lam * jnp.sum(k * k) * c.T @ c - n * jnp.eye(m)) / (2 * n)
        mk = (tc * k.T @ a_in @ k + lam * jnp.sum(c * c) * k.T @ k - m * jnp.eye(n)) / (2 * m)
        lc = beta2 / jnp.maximum(1.0, jnp.linalg.norm(mc))
        lk = beta2 / jnp.maximum(1.0, jnp.linalg.norm(mk))
        return c @ (jnp.eye(m) - lc * mc), k @ (jnp.eye(n) - lk * mk), jnp.linalg.norm(mc)

    c, k = jnp.eye(m), jnp.eye(n)
    res = np.nan
    for _ in range(steps):
        c, k, r = step(c, k)
        res = float(r)
    cc, kk = np.asarray(c @ c.T, np.float64), np.asarray(k @ k.T, np.float64)
    # the fixed point's covariance factors, solved by the dense damped flip-flop
    ao, ai = np.asarray(a_out, np.float64), np.asarray(a_in, np.float64)
    so, si = np.eye(m), np.eye(n)
    for _ in range(200):
        si_inv = np.linalg.inv(si)
        so = (np.trace(ai @ si_inv) * ao + lam * np.trace(si_inv) * np.eye(m)) / n
        so_inv = np.linalg.inv(so)
        si = (np.trace(ao @ so_inv) * ai + lam * np.trace(so_inv) * np.eye(n)) / m
    ref = np.kron(np.linalg.inv(so), np.linalg.inv(si))
    got = np.kron(cc, kk)
    cos = float(np.sum(ref * got) / (np.linalg.norm(ref) * np.linalg.norm(got)))
    raw = np.kron(np.linalg.pinv(ao + 1e-12 * np.eye(m)), np.linalg.pinv(ai + 1e-12 * np.eye(n)))
    return cos, res, float(np.sum(raw * got) / (np.linalg.norm(raw) * np.linalg.norm(got)))


# ------------------------------------------------------------------------------ P2-30
PREC_METHODS = ("eigh", "eigh@float32", "newton", "newton_schulz", "if_shampoo")
PREC_DTYPES = ("float32", "bfloat16", "float16")
PREC_PS = (0.25, 0.5, 1.0)
# Status codes of the precision arrays (precond_lab.errors.Status; the harness's codes)
OK, NOT_CONVERGED, NONFINITE = Status.OK.code, Status.NOT_CONVERGED.code, Status.NONFINITE.code
UNSUPPORTED_DTYPE, NOT_SPD = Status.UNSUPPORTED_DTYPE.code, Status.NOT_SPD.code
UNSUPPORTED_EXPONENT, NOT_APPLICABLE = Status.UNSUPPORTED_EXPONENT.code, Status.NOT_APPLICABLE.code
_FAIL_CODES = (NOT_CONVERGED, NONFINITE, NOT_SPD)


def _exponent_ok(method, p):
    if method == "if_shampoo":
        return p == 1.0
    if method == "newton_schulz":
        return p in (0.5, 1.0)
    return True


def _real_precision(factors, damping_rel, dtypes=PREC_DTYPES, ps=PREC_PS):
    """Like ``precision_study`` on given SPD factors (truth: float64 eigh of the rounded input).

    Returns ``status (method, dtype, p, factor)`` (harness codes) and ``error`` (relative
    Frobenius error vs the truth of the factor rounded to the dtype).
    """
    from precond_lab.linalg import UnsupportedDtypeError, matrix_power

    shape = (len(PREC_METHODS), len(dtypes), len(ps), len(factors))
    status = np.full(shape, NOT_APPLICABLE, np.int8)
    err = np.full(shape, np.nan)
    for jf, f in enumerate(factors):
        f = 0.5 * (f + f.T) / np.trace(f)  # trace 1: scale-free, no f16 overflow
        lam = damping_rel / f.shape[0]
        for kd, dt in enumerate(dtypes):
            f_dt = jnp.asarray(f, jnp.float32).astype(dt)
            f_r = np.asarray(f_dt.astype(jnp.float32), np.float64)
            w, q = np.linalg.eigh(0.5 * (f_r + f_r.T))
            for lp, p in enumerate(ps):
                truth = (q * np.abs(w + lam) ** (-p)) @ q.T
                for im, label in enumerate(PREC_METHODS):
                    method, _, up = label.partition("@")
                    if not _exponent_ok(method, p):
                        status[im, kd, lp, jf] = UNSUPPORTED_EXPONENT
                        continue
                    try:
                        x, info = matrix_power(
                            f_dt, -p, lam, method=method, upcast=up or None, check=False
                        )
                    except UnsupportedDtypeError:
                        status[im, kd, lp, jf] = UNSUPPORTED_DTYPE
                        continue
                    x64 = np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)
                    finite = bool(np.isfinite(x64).all())
                    status[im, kd, lp, jf] = (
                        OK
                        if (info.converged and finite)
                        else (NOT_CONVERGED if finite else NONFINITE)
                    )
                    if finite:
                        err[im, kd, lp, jf] = np.linalg.norm(x64 - truth) / np.linalg.norm(truth)
    return status, err


def _synthetic_precision(conds, dims, repeats, damping, dtypes=PREC_DTYPES, ps=PREC_PS):
    from precond_lab.linalg import precision_study

    ds = precision_study(
        methods=("eigh", "newton", "newton_schulz", "if_shampoo"),
        dtypes=tuple(dtypes),
        conds=tuple(conds),
        dims=tuple(dims),
        dampings=(damping,),
        ps=tuple(ps),
        repeats=int(repeats),
    )
    ds = ds.isel(damping=0).drop_vars("damping")
    st = ds["status"].transpose("method", "dtype", "p", "cond", "dim", "repeat")
    er = ds["rel_error_rounded_input"].transpose("method", "dtype", "p", "cond", "dim", "repeat")
    st = st.reindex({"method": list(PREC_METHODS)}, fill_value=NOT_APPLICABLE).values
    er = er.reindex({"method": list(PREC_METHODS)}).values
    n = len(conds) * len(dims) * int(repeats)
    return st.reshape(*st.shape[:3], n), er.reshape(*er.shape[:3], n)


# ------------------------------------------------------------------------------ P2-31
def _timing_section(sizes, repeats):
    """Per-round seconds ``[size, op, round]`` of :data:`TIMING_OPS`, interleaved per size
    (:func:`precond_lab.timing.interleaved`: compilation in the warm-up, rotated order)."""
    from precond_lab.online import if_shampoo

    est = if_shampoo(damping=1e-3, batch_size=32)
    eigh = jax.jit(jnp.linalg.eigh)
    mm = jax.jit(lambda a, b: a @ b)
    rng = np.random.default_rng(0)
    out = np.zeros((len(sizes), len(TIMING_OPS), int(repeats)))
    for i, d in enumerate(sizes):
        a = rng.standard_normal((d, d)).astype(np.float32)
        s = jnp.asarray(a @ a.T / d + np.eye(d, dtype=np.float32))
        g = jnp.asarray(rng.standard_normal((d, d)).astype(np.float32) / d)
        args = {}
        for dt, tag in ((jnp.bfloat16, "bf16"), (jnp.float32, "f32")):
            args[f"if_update_{tag}"] = (est.update, est.init(g.astype(dt)), g.astype(dt))
            args[f"matmul_{tag}"] = (mm, s.astype(dt), s.astype(dt))
        args["eigh_f32"] = (eigh, s)
        ops = {k: (lambda f=v[0], a=v[1:]: f(*a)) for k, v in args.items()}
        t = timing.interleaved({k: ops[k] for k in TIMING_OPS}, repeats=int(repeats))
        out[i] = [t.seconds[k] for k in TIMING_OPS]
    return out


# ---------------------------------------------------------------------------------- run


def run(config: Config, **overrides) -> xr.Dataset:
    """Measure P2-27..P2-31 on one captured step of real gradients (see the module doc).

    Args:
        config: a :class:`Config` (e.g. ``PRESETS["quick"]``).
        **overrides: :class:`Config` fields to replace (``dataclasses.replace``), e.g.
            ``run(PRESETS["test"], kfac_steps=50)``.

    Returns:
        The measurements of every claim as one Dataset.
    """
    from precond_lab.study import cached_capture

    cfg = dataclasses.replace(config, **overrides) if overrides else config
    layers, precision, damping_rel = list(cfg.layers), cfg.precision, cfg.damping_rel
    response_steps, loss_scales = cfg.response_steps, tuple(cfg.loss_scales)
    init_batch, init_beta2 = cfg.init_batch, cfg.init_beta2
    t_start = time.perf_counter()
    cap = cached_capture(**cfg.capture.kwargs())
    step_node = cap[schema.step_name(cfg.capture_step)]
    nl = len(layers)
    bs = list(cfg.batch_sizes)
    seeds = [int(x) for x in cfg.stream_seeds]
    level = np.full((nl, len(seeds), 2, 2, 2, len(bs)), np.nan)
    init = None
    dcos = np.zeros((nl, 2, 2, 2, cfg.direction_batches))
    lam_newton = np.zeros(nl)
    scal = np.zeros((nl, len(loss_scales), 2, 2))
    kf = np.zeros((nl, 3))
    lams, shapes, factors, fnames = [], [], [], []
    dtypes = list(precision.dtypes)
    ps = list(precision.ps)
    for il, layer in enumerate(layers):
        g, sampled, acts, backs, ggn = _layer_arrays(step_node[layer])
        m, n = g.shape[1:]
        shapes.append(f"{m}x{n}")
        lam = damping_rel * float(np.mean(np.sum(g * g, axis=(1, 2)))) / (m * n)
        lams.append(lam)
        if il == 0:  # B and s0 responses on the first layer only (cost)
            level[il] = _batch_section((sampled, g), bs, response_steps, lam, seeds)
            init = _init_section(g, response_steps, init_batch, init_beta2)
        dcos[il], lam_newton[il] = _direction_section(
            g, ggn, lam, damping_rel, cfg.direction_batches, cfg.direction_batch, seed=il
        )
        scal[il] = _scaling_section(g, loss_scales)
        kf[il] = _kfac_if_shampoo(acts, backs, lam, cfg.kfac_steps)
        for side, f in (
            ("L", np.einsum("kij,klj->il", g, g) / len(g)),
            ("R", np.einsum("kij,kil->jl", g, g) / len(g)),
        ):
            if f.shape[0] in precision.dims:  # sizes shared with the synthetic run (compiles)
                factors.append(f.astype(np.float64))
                fnames.append(f"{layer}:{side}")
    r_status, r_err = _real_precision(factors, damping_rel, dtypes, ps)
    s_status, s_err = _synthetic_precision(
        precision.conds, precision.dims, precision.repeats, 1e-6, dtypes, ps
    )
    timing = _timing_section(list(cfg.timing_sizes), cfg.timing_repeats)

    ds = xr.Dataset(
        coords={
            "layer": list(layers),
            "label": ["sampled", "real"],
            "rf_method": ["rf_rmsprop", "if_shampoo"],
            "b_scaling": ["with_B", "without_B"],
            "batch_size": bs,
            "seed": seeds,
            "batch": np.arange(cfg.direction_batches),
            "timing_op": list(TIMING_OPS),
            "timing_round": np.arange(int(cfg.timing_repeats)),
            "s0": [0.0, 1.0],
            "init_step": np.arange(response_steps),
            "estimator": ["kl_optimal", "shampoo_squared"],
            "approx_power": [0.5, 1.0],
            "exact_power": [0.5, 1.0],
            "loss_scale": list(loss_scales),
            "p": [0.5, 1.0],
            "prec_method": list(PREC_METHODS),
            "dtype": dtypes,
            "power": ps,
            "factor": fnames,
            "case": np.arange(s_status.shape[-1]),
            "size": list(cfg.timing_sizes),
        }
    )
    ds["layer_shape"] = ("layer", shapes)
    ds["damping"] = ("layer", np.asarray(lams))
    ds["damping_newton"] = ("layer", lam_newton)
    ds["step_scale"] = (("layer", "seed", "label", "rf_method", "b_scaling", "batch_size"), level)
    ds["step_scale"].attrs["long_name"] = (
        "stationary effective step scale: mean 1/(s+λ) (RF-RMSProp), "
        "mean eigenvalue of CCᵀ⊗KKᵀ (IF-Shampoo)"
    )
    ds["init_step_norm"] = (("s0", "init_step"), init)
    ds["direction_cosine"] = (
        ("layer", "estimator", "approx_power", "exact_power", "batch"),
        dcos,
    )
    ds["direction_cosine"].attrs["long_name"] = (
        "cos(S^-approx_power g, (H + λ_H I)^-exact_power g) per real-label mini-batch g; H = the "
        "layer's exact Gauss–Newton"
    )
    ds["scaling_ratio"] = (("layer", "loss_scale", "p"), scal[..., 0])
    ds["scaling_predicted"] = (("layer", "loss_scale", "p"), scal[..., 1])
    ds["kfac_if_cosine"] = ("layer", kf[:, 0])
    ds["kfac_if_residual"] = ("layer", kf[:, 1])
    ds["kfac_if_cosine_undamped"] = ("layer", kf[:, 2])
    ds["real_status"] = (("prec_method", "dtype", "power", "factor"), r_status)
    ds["real_error"] = (("prec_method", "dtype", "power", "factor"), r_err)
    ds["synthetic_status"] = (("prec_method", "dtype", "power", "case"), s_status)
    ds["synthetic_error"] = (("prec_method", "dtype", "power", "case"), s_err)
    ds["time_s"] = (("size", "timing_op", "timing_round"), timing)
    ds["time_s"].attrs["long_name"] = (
        "seconds per call, per interleaved round (warm-up excluded; precond_lab.timing)"
    )
    capture = cfg.capture
    ds.attrs.update(
        make_attrs(
            TITLE,
            preset=cfg.preset_name(PRESETS),
            source=f"{capture.model}/{capture.dataset} capture",
            study=NAME,
            model=capture.model,
            dataset=capture.dataset,
            capture_step=int(cfg.capture_step),
            num_samples=int(capture.num_samples),
            damping_rel=float(damping_rel),
            damping_rule="lambda = damping_rel * E||G||^2/(m n) per layer; the Gauss-Newton "
            "reference of P2-28 is damped by damping_rel * tr H/(m n)",
            newton_reference="exact Gauss-Newton of the layer (capture target ggn)",
            direction_batch=int(cfg.direction_batch),
            response_steps=int(response_steps),
            init_batch=int(init_batch),
            init_beta2=float(init_beta2),
            sampled_labels="ggn_mc pseudo-gradients times sqrt(mc) (zero-mean per example)",
            precision_synthetic=f"conds {list(precision.conds)}, dims "
            f"{list(precision.dims)}, repeats {precision.repeats}, damping 1e-6",
            precision_real="Shampoo factors L=E[GG^T], R=E[G^TG] scaled to trace 1, "
            "damping damping_rel/d",
            status_codes=", ".join(f"{k}={v}" for k, v in STATUS_CODES.items()),
            timing_device=str(jax.devices()[0].device_kind),
            timing_backend=jax.default_backend(),
            elapsed_s=float(time.perf_counter() - t_start),
        )
    )
    return ds


# --------------------------------------------------------------------------------- plot
def _failure(status, err):
    # code 4 (input not SPD once rounded to the dtype) is no method's failure: not counted
    attempted = np.isin(status, (OK, NOT_CONVERGED, NONFINITE))
    fail = np.isin(status, (NOT_CONVERGED, NONFINITE)) | ((status == OK) & ~(err <= P230_ERR_OK))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(attempted.sum(-1) > 0, fail.sum(-1) / attempted.sum(-1), np.nan)


def _timing_summary(ds, op):
    """Median and quartiles over the interleaved rounds, per size."""
    t = ds["time_s"].sel(timing_op=op)
    return (
        t.median("timing_round").values,
        t.quantile(0.25, "timing_round").values,
        t.quantile(0.75, "timing_round").values,
    )


def _ratio(ds, num, den, size_index=-1):
    """The per-round ratio ``num/den`` at one size (:func:`precond_lab.timing.ratio`)."""
    t = timing.Timings(
        seconds={
            k: [float(v) for v in ds["time_s"].isel(size=size_index).sel(timing_op=k).values]
            for k in (num, den)
        },
        warmup={num: [], den: []},
    )
    return timing.ratio(t, num, den)


def _figures(ds: xr.Dataset) -> dict:
    """The study's figures by file stem."""
    from precond_lab.plotting import OKABE_ITO, figure, style

    def colour(i):
        return OKABE_ITO[_COLOURS[i % len(_COLOURS)]]

    figures = {}
    n_seeds = ds.sizes["seed"]
    with style():
        # P2-27: step scale vs B (median over seeds, band: min–max over seeds)
        fig, axes = figure(1, 3, panel=(2.3, 2.9))
        axes = axes[0]
        layer0 = ds.layer.values[0]
        for ax, meth in zip(axes[:2], ds.rf_method.values, strict=True):
            for i, (lab, bsc) in enumerate(
                [(la, b) for la in ds.label.values for b in ds.b_scaling.values]
            ):
                y = ds["step_scale"].sel(layer=layer0, label=lab, rf_method=meth, b_scaling=bsc)
                y = y / y.isel(batch_size=0)
                med = y.median("seed")
                ax.loglog(
                    ds.batch_size,
                    med,
                    marker="os^v"[i],
                    color=colour(i),
                    ls="-" if bsc == "with_B" else "--",
                    label=f"{lab} labels, {bsc.replace('_', ' ')}",
                )
                ax.fill_between(
                    ds.batch_size, y.min("seed"), y.max("seed"), color=colour(i), alpha=0.2
                )
            ax.set_xlabel("batch size B")
            ax.set_ylabel("step scale / value at B=1")
            ax.set_title(f"{meth} ({layer0}), {n_seeds} seeds", fontsize=7)
        axes[0].legend(fontsize=5)
        ax = axes[2]
        for i, s0 in enumerate(ds.s0.values):
            ax.semilogy(
                ds.init_step, ds["init_step_norm"].sel(s0=s0), color=colour(i), label=f"s₀ = {s0:g}"
            )
        ax.set_xlabel("step")
        ax.set_ylabel("‖g/(s+λ)‖ (RF-RMSProp)")
        ax.set_title(f"initialisation (B={ds.attrs.get('init_batch')}, one stream)", fontsize=7)
        ax.legend(fontsize=6)
        figures[f"{NAME}_batch_init"] = fig

        # P2-28: direction cosines to the damped Gauss–Newton direction, quartiles over batches
        nb = ds.sizes["batch"]
        fig, axes = figure(1, ds.sizes["layer"], panel=(3.3, 2.9))
        axes = axes[0]
        for ax, layer in zip(axes, ds.layer.values, strict=True):
            x = np.arange(4)
            for i, est in enumerate(ds.estimator.values):
                c = ds["direction_cosine"].sel(layer=layer, estimator=est)
                c = c.stack(pair=("approx_power", "exact_power")).transpose("pair", "batch")
                med = np.median(c.values, axis=1)
                lo, hi = np.quantile(c.values, [0.25, 0.75], axis=1)
                ax.bar(
                    x + (i - 0.5) * 0.38,
                    med,
                    0.38,
                    color=colour(i),
                    label=est,
                    yerr=[med - lo, hi - med],
                    capsize=2,
                    error_kw={"linewidth": 0.8},
                )
            ax.set_xticks(
                x,
                ["S^-½ vs H^-½", "S^-½ vs H^-1", "S^-1 vs H^-½", "S^-1 vs H^-1"],
                rotation=20,
                fontsize=6,
            )
            ax.set_ylim(0, 1)
            ax.set_ylabel("cos to (H+λI)^-p g (Gauss–Newton)", fontsize=7)
            ax.set_title(
                f"{layer} ({ds['layer_shape'].sel(layer=layer).item()}); median, quartiles over "
                f"{nb} batches",
                fontsize=6,
            )
        axes[0].legend(fontsize=6)
        figures[f"{NAME}_directions"] = fig

        # P2-30: failure rates in bf16/f16; unsupported / not-run cells are hatched, no value
        fig, axes = figure(1, 2, panel=(3.4, 3.0))
        axes = axes[0]
        for ax, src in zip(axes, ("synthetic", "real"), strict=True):
            fr = _failure(ds[f"{src}_status"].values, ds[f"{src}_error"].values)
            labels, vals = [], []
            for im, meth in enumerate(ds.prec_method.values):
                for lp, pw in enumerate(ds.power.values):
                    if np.all(np.isnan(fr[im, :, lp])):
                        continue
                    labels.append(f"{meth}\np={pw:g}")
                    vals.append(fr[im, :, lp])
            vals = np.asarray(vals).reshape(len(labels), ds.sizes["dtype"])
            x = np.arange(len(labels))
            w = 0.8 / ds.sizes["dtype"]
            for kd, dt in enumerate(ds.dtype.values):
                xs = x + (kd - (ds.sizes["dtype"] - 1) / 2) * w
                ok = ~np.isnan(vals[:, kd])
                ax.bar(xs[ok], vals[ok, kd], w, color=colour(kd), label=dt)
                ax.scatter(xs[ok], vals[ok, kd], s=6, color=colour(kd), zorder=3)  # 0 visible
                if np.any(~ok):  # no value: a hatched box in the strip below the axis
                    ax.bar(
                        xs[~ok],
                        np.full((~ok).sum(), 0.08),
                        w,
                        bottom=-0.1,
                        facecolor="none",
                        edgecolor=colour(kd),
                        hatch="xxxx",
                        linewidth=0.5,
                        label=f"{dt}: unsupported / not run (no value)",
                    )
            ax.axhline(0.0, color="k", linewidth=0.6)
            ax.set_xticks(x, labels, rotation=60, fontsize=5)
            ax.set_ylim(-0.12, 1.05)
            ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
            ax.set_ylabel("failure rate (below 0: no value)", fontsize=7)
            n_cases = ds.sizes["case"] if src == "synthetic" else ds.sizes["factor"]
            ax.set_title(f"{src} SPD matrices ({n_cases} per cell)", fontsize=7)
        axes[0].legend(fontsize=5)
        figures[f"{NAME}_precision"] = fig

        # P2-31: timings, median and quartiles over the interleaved rounds
        fig, axes = figure(1, 1, panel=(4.2, 3.2))
        ax = axes[0, 0]
        labels = {
            "eigh_f32": "eigh float32",
            "if_update_bf16": "IF-Shampoo update bfloat16",
            "if_update_f32": "IF-Shampoo update float32",
            "matmul_bf16": "one matmul bfloat16",
        }
        for i, (k, lab) in enumerate(labels.items()):
            med, lo, hi = _timing_summary(ds, k)
            ax.errorbar(
                ds["size"],
                med,
                yerr=[med - lo, hi - med],
                marker="os^v"[i],
                color=colour(i),
                label=lab,
                capsize=2,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("size d (d×d factors / gradient)")
        ax.set_ylabel("seconds (median, quartiles)")
        ax.set_title(
            f"{ds.attrs.get('timing_device', '?')}: {ds.sizes['timing_round']} interleaved rounds",
            fontsize=8,
        )
        ax.legend(fontsize=6)
        figures[f"{NAME}_timing"] = fig
    return figures


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """Step scale vs B and s₀; direction cosines; bf16/f16 failure rates; timings."""
    from precond_lab.study import save_figures

    return save_figures(_figures(ds), figdir)


# ----------------------------------------------------------------------------- verdicts
def verdicts(ds: xr.Dataset) -> list[Row]:
    return [_p2_27(ds), _p2_28(ds), _p2_29(ds), _p2_30(ds), _p2_31(ds)]


def _fmt_seeds(da):
    """``median [min–max]`` over seeds of each remaining entry, joined by ``/``."""
    med, lo, hi = da.median("seed"), da.min("seed"), da.max("seed")
    return "/".join(
        f"{float(a):.2f} [{float(b):.2f}–{float(c):.2f}]"
        for a, b, c in zip(
            np.ravel(med.values), np.ravel(lo.values), np.ravel(hi.values), strict=True
        )
    )


def _p2_27(ds):
    ss = ds["step_scale"].isel(layer=0)  # measured on the first layer only
    bmin, bmax = int(ds.batch_size[0]), int(ds.batch_size[-1])
    ratio = ss.isel(batch_size=-1) / ss.isel(batch_size=0)  # (seed, label, method, b_scaling)
    real = ratio.sel(label="real").median("seed")
    flat = bool(np.all(np.abs(np.log(real.sel(b_scaling="with_B"))) <= np.log(P227_FLAT)))
    drift = bool(np.all(real.sel(b_scaling="without_B") >= P227_FLAT))
    init = ds["init_step_norm"]
    n = init.sizes["init_step"]
    early = init.isel(init_step=slice(0, max(1, n // 20))).max("init_step")
    late = init.isel(init_step=slice(n // 2, None)).median("init_step")
    r0, r1 = (
        float(early.sel(s0=0.0) / late.sel(s0=0.0)),
        float(early.sel(s0=1.0) / late.sel(s0=1.0)),
    )
    init_ok = r0 >= P227_BLOWUP and r1 <= P227_CALM
    parts = []
    for lab in ("real", "sampled"):
        for meth in ds.rf_method.values:
            r = ratio.sel(rf_method=meth, label=lab)
            parts.append(
                f"{meth} {lab}{' (secondary)' if lab == 'sampled' else ''}: with B "
                f"{_fmt_seeds(r.sel(b_scaling='with_B'))}, without "
                f"{_fmt_seeds(r.sel(b_scaling='without_B'))}"
            )
    return claim_verdict(
        "P2-27",
        judge(flat and drift and init_ok, flat or init_ok),
        f"{ds.layer.values[0]}: step-scale ratio B={bmax} vs B={bmin}, median [min–max] over "
        f"{ds.sizes['seed']} stream seeds: "
        + "; ".join(parts)
        + f". RF-RMSProp early-max/late-median step: s₀=0 {r0:.3g}, s₀=1 {r1:.3g} "
        f"(B={ds.attrs.get('init_batch')}, β₂={ds.attrs.get('init_beta2')}).",
        f"holds if, with real labels (median over seeds), the step-scale ratio is within "
        f"×{P227_FLAT} with B and ≥ {P227_FLAT} without B for both methods, and s₀=0 gives an "
        f"early step ≥ {P227_BLOWUP}× the late median while s₀=1 stays ≤ {P227_CALM}×; partial "
        "if the B part or the s₀ part holds. Sampled labels (zero-mean, unbiased) are reported "
        "as the secondary case; real labels carry the (B−1)E[g]E[g]ᵀ bias.",
        kind=TestKind.PROXY,
    )


def _p2_28(ds):
    c = ds["direction_cosine"]
    rf_newton = c.sel(approx_power=1.0, exact_power=1.0)
    root_newton = c.sel(approx_power=0.5, exact_power=1.0)
    win = (rf_newton > root_newton).mean("batch")  # (layer, estimator)
    diff = (rf_newton - root_newton).median("batch")
    align = bool(np.all(diff > 0))
    partial = bool(np.any(diff > 0))
    nb = ds.sizes["batch"]
    parts = []
    for layer in ds.layer.values:
        for est in ds.estimator.values:
            sel = dict(layer=layer, estimator=est)
            parts.append(
                f"{layer} {est}: cos(S⁻¹g, H⁻¹g) {float(rf_newton.sel(**sel).median()):.3f} vs "
                f"cos(S^-½g, H⁻¹g) {float(root_newton.sel(**sel).median()):.3f} (root-free "
                f"closer on {float(win.sel(**sel)):.0%} of {nb} batches)"
            )
    dev = np.abs(ds["scaling_ratio"] / ds["scaling_predicted"] - 1.0)
    sc = "; ".join(
        f"c={float(cv):g}: root ×{float(ds['scaling_ratio'].sel(loss_scale=cv, p=0.5).mean()):.4g}"
        f", root-free ×{float(ds['scaling_ratio'].sel(loss_scale=cv, p=1.0).mean()):.4g} "
        f"(pred. 1, {1 / float(cv):g})"
        for cv in ds.loss_scale.values
    )
    return claim_verdict(
        "P2-28",
        judge(align, partial),
        "median over real-label mini-batches (B="
        f"{ds.attrs.get('direction_batch', '?')}), H = the layer's exact Gauss–Newton + λ_H I: "
        + "; ".join(parts)
        + f". Information: loss scaling of real gradients (Shampoo², relative damping): {sc}; "
        f"max deviation {float(dev.max()):.2e} (exact check: P2-42).",
        "holds if on every layer and estimator the median over batches of cos(S⁻¹g, H⁻¹g) − "
        "cos(S^-½g, H⁻¹g) is > 0; partial if on some.",
        kind=TestKind.PROXY,
    )


def _p2_29(ds):
    cos = ds["kfac_if_cosine"]
    ok = bool(np.all(cos >= P229_COS))
    return claim_verdict(
        "P2-29",
        judge(False, ok),
        "IF-Shampoo's multiplicative update driven by K-FAC factors E[δδᵀ], E[aaᵀ]: cos(CCᵀ⊗KKᵀ, "
        "damped K-FAC inverse) "
        + ", ".join(
            f"{layer} {float(cos.sel(layer=layer)):.4f} (residual ‖m_C‖ "
            f"{float(ds['kfac_if_residual'].sel(layer=layer)):.1e})"
            for layer in ds.layer.values
        )
        + ". Only the fixed point is checked; no SINGD training run, so at most partial.",
        f"partial if cosine ≥ {P229_COS} on every layer (fixed-point check only); a full "
        "verdict needs optimiser runs with K-FAC curvature.",
        kind=TestKind.PROXY,
    )


def _p230_summary(ds):
    st = np.concatenate([ds["synthetic_status"].values, ds["real_status"].values], axis=-1)
    er = np.concatenate([ds["synthetic_error"].values, ds["real_error"].values], axis=-1)
    fr = _failure(st, er)  # (method, dtype, power)
    with warnings.catch_warnings():  # a method that failed everywhere has no median: NaN
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        med = np.nanmedian(np.where(st == OK, er, np.nan), axis=-1)
    return fr, med


def _f16(fr, ds, i, p):
    dts = list(ds.dtype.values)
    return f"{fr[i, dts.index('float16'), p]:.0%}" if "float16" in dts else "not run"


def _p2_30(ds):
    fr, med = _p230_summary(ds)
    meths = list(ds.prec_method.values)
    powers = list(ds.power.values)
    kd = list(ds.dtype.values).index("bfloat16")
    i_if, p1 = meths.index("if_shampoo"), powers.index(1.0)
    f_if, e_if = fr[i_if, kd, p1], med[i_if, kd, p1]
    eigh_status = ds["synthetic_status"].sel(prec_method="eigh", dtype="bfloat16").values
    eigh_unsupported = bool(
        np.any(eigh_status == UNSUPPORTED_DTYPE) and not np.any(eigh_status == OK)
    )
    # Shampoo's root-inverses (p = 1/4, 1/2) by the matmul-only methods that run in bf16
    best = None
    for m in ("newton", "newton_schulz"):
        for p in (0.25, 0.5):
            if p not in powers:
                continue
            f, e = fr[meths.index(m), kd, powers.index(p)], med[meths.index(m), kd, powers.index(p)]
            if np.isnan(f):
                continue
            if best is None or (f, e) < (best[2], best[3]):
                best = (m, p, f, e)
    if_ok = f_if <= P230_FAIL
    sh_bad = best is None or best[2] >= f_if + P230_GAP or best[3] >= P230_ERR * e_if
    sh_txt = (
        "no bf16 root-inverse method ran"
        if best is None
        else f"best Shampoo root-inverse in bf16: {best[0]} p={best[1]:g} failure "
        f"{best[2]:.0%}, median error {best[3]:.3g}"
    )
    up = meths.index("eigh@float32")
    return claim_verdict(
        "P2-30",
        judge(if_ok and sh_bad and eigh_unsupported, if_ok),
        f"IF-Shampoo inverse in bf16: failure {f_if:.0%}, median error {e_if:.3g}; {sh_txt}; "
        f"eigh in bf16 {'unsupported by JAX (CPU)' if eigh_unsupported else 'ran'}; upcast "
        f"eigh@float32 p=1/4 failure {fr[up, kd, powers.index(0.25)]:.0%}. Float16: IF-Shampoo "
        f"failure {_f16(fr, ds, i_if, p1)}. Pooled over "
        f"synthetic spectra ({ds.attrs.get('precision_synthetic')}) and "
        f"{ds.sizes['factor']} real Shampoo factors.",
        f"a run fails if not converged, non-finite or error > {P230_ERR_OK} (vs float64 truth of "
        f"the rounded input; inputs not SPD once rounded are excluded); holds if IF-Shampoo "
        f"fails ≤ {P230_FAIL:.0%} in bf16, eigh is "
        f"unsupported, and the best bf16 root-inverse fails ≥ {P230_GAP:.0%} more or has "
        f"≥ {P230_ERR}× the error; partial if only IF-Shampoo's stability holds.",
        kind=TestKind.PROXY,
    )


def _p2_31(ds):
    """Timed by interleaved rounds; a verdict only where the ratio's spread clears the
    threshold (:func:`precond_lab.timing.ratio_verdict`), and only on an accelerator."""
    ratio = _ratio(ds, "eigh_f32", "if_update_bf16")
    half = _ratio(ds, "if_update_f32", "if_update_bf16")
    speed, gain = timing.ratio_verdict(ratio, P231_SPEEDUP), timing.ratio_verdict(half, 1.0)
    dev = ds.attrs.get("timing_device", "?")
    med = {k: _timing_summary(ds, k) for k in TIMING_OPS}
    rows = ", ".join(
        f"d={int(d)}: eigh {1e3 * med['eigh_f32'][0][i]:.2f} ms "
        f"[{1e3 * med['eigh_f32'][1][i]:.2f}–{1e3 * med['eigh_f32'][2][i]:.2f}], IF bf16 "
        f"{1e3 * med['if_update_bf16'][0][i]:.2f} ms, IF f32 {1e3 * med['if_update_f32'][0][i]:.2f}"
        f" ms, bf16 matmul {1e3 * med['matmul_bf16'][0][i]:.2f} ms"
        for i, d in enumerate(ds["size"].values)
    )
    evidence = (
        f"device {dev}, {ds.sizes['timing_round']} interleaved rounds (median [quartiles]): "
        f"{rows}; per-round eigh_f32/IF_bf16 at d={int(ds['size'][-1])}: {ratio} ({speed} "
        f"{P231_SPEEDUP:g}×); IF_f32/IF_bf16: {half} ({gain} 1×)."
    )
    tol = (
        f"on an accelerator: holds if the per-round ratio eigh_f32/IF_bf16 has its quartiles "
        f"≥ {P231_SPEEDUP}× at the largest size and IF_f32/IF_bf16 ≥ 1; does not hold if they "
        f"lie below {P231_SPEEDUP}×; inconclusive if the spread straddles it; partial if only "
        "the speed-up holds"
    )
    if ds.attrs.get("timing_backend") == "cpu":
        return claim_verdict(
            "P2-31",
            NOT_TESTABLE_HERE,
            "not testable on a CPU: bfloat16 matmuls are emulated there (no bf16 units), while "
            "the claim (eigh f32 ≈ 16× a bf16 matmul, README) is about GPUs. CPU numbers as "
            "context only: " + evidence,
            tol,
            kind=TestKind.NOT_TESTABLE,
            setting="",
        )
    if speed == "inconclusive":
        verdict = INCONCLUSIVE
    elif speed == "below":
        verdict = FAILS
    else:
        verdict = HOLDS if gain == "above" else PARTIAL
    return claim_verdict(
        "P2-31",
        verdict,
        evidence,
        tol,
        kind=TestKind.PROXY,
        setting=f"single-operation timings on {dev}, not end-to-end training",
    )
