"""KL-Shampoo's online estimation on real gradients: proximal EMA, QR refresh, EMA eigenvalues.

Claims (P1, Lin et al.; the recipe is the official code's ``KLOpt``):

* **P1-13** — the EMA factor updates are a stochastic proximal-gradient step on the KL
  objective: on a *stationary* stream (mini-batches of real per-example gradients drawn
  from one captured step) KL-Shampoo's KL gap to the batch KL optimum should fall,
  decreasing in expectation (averaged over stream seeds).
* **P1-19** — the QR eigenbasis refresh (one power step + QR every ``T`` steps) is cheaper
  than ``eigh`` and gives a preconditioner about as good as ``eigh`` every step.
* **P1-20** — the EMA of the eigenvalues matters: instantaneous estimates
  ``λ = diag(QᵀSQ)`` in the stale QR basis are worse. P1 ablates this inside LM training
  (a drifting gradient distribution between basis refreshes); the *trajectory* stream
  mirrors that: per-example gradients of several captured training steps, fed in order.
* **P1-41** — memory: KL-Shampoo's state holds no Adam second moment, SOAP's and grafted
  Shampoo's hold one (``m·n`` floats); counted from the states' shapes, no training.

**One family, one scoring.** Every online state and the batch reference are scored as
members of the Kronecker family ``{A ⊗ B}`` with the damping *inside* the factors, by
``KL(Σ+λI ‖ A⊗B)`` in float64. The batch reference is the damped KL optimum
(:func:`precond_lab.estimators.kl_optimal` with ``damping=λ``), the minimum of that
family, so the gap ``KL(state) − KL(optimum)`` is ≥ 0 by construction; :func:`run`
raises if a gap falls below ``−1e-9·max(1, KL_opt)`` (round-off). Scoring a state as
``S + λI`` instead (not a Kronecker product) can "beat" the optimum, which is how
negative gaps arose before. How each state carries its damping:

``shampoo``            Shampoo² ``(L+nλI) ⊗ (R+mλI) / tr(L+nλI)``: each factor damped as
                       the damped one-sided KL optimum ``L + nλI`` (and ``R + mλI``)
``kl_shampoo``         the library's KL-Shampoo with ``damping=λ`` (the code's damping
                       branch: ``λ·mean(1/λ_other)`` added to each eigenvalue target, as in
                       the damped two-sided fixed point); QR refresh, EMA eigenvalues
``kl_shampoo_instant`` the library's KL-Shampoo with ``eigenvalues="instant"``: same
                       factors and QR basis, ``λ_a = diag(Q_aᵀS_aQ_a) + λ·mean(1/λ_b)``
                       recomputed each step (the ablation)
``kl_shampoo_eigh``    ``eigenvalues="eigh"``: same factor EMA, basis and eigenvalues from
                       ``eigh(S)`` every step (plus the same damping term)

The KL variants share the factor update (the other factor's inverse from its eigen
approximation); only the eigen-approximation they read differs. The streams and
estimators run in float32 as the paper's code does; only the scoring is float64.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from precond_lab import schema, study, timing
from precond_lab.errors import ConvergenceError
from precond_lab.provenance import make_attrs
from precond_lab.study import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    PARTIAL,
    Row,
    TestKind,
    claim_verdict,
    judge,
)
from studies._setups import Capture

NAME = "online_estimators"
TITLE = "KL-Shampoo online: proximal EMA, QR refresh vs eigh, EMA eigenvalues (P1)"
PAPER = "P1 Lin et al. 2025"
STREAMS = ("stationary", "trajectory")


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
    """One run of the study.

    Attributes:
        capture: the captured run of the stationary stream.
        capture_step: the captured step whose per-example gradients form the stationary
            stream.
        trajectory: the captured run of the non-stationary stream; every one of its
            ``steps`` is a segment of equal length, fed in training order.
        layers: the layers scored.
        stream_steps: length of each stream.
        batch: per-example gradients per stream step (drawn with replacement).
        seeds: stream seeds.
        every: score every ``every``-th step (and the last).
        frequency: KL-Shampoo's QR refresh period ``T``.
        beta: the factor EMA weight ``β`` (all variants).
        timing_sizes: factor sizes of the eigh vs QR refresh timing.
        timing_repeats: interleaved timing rounds per size (≥ 5).
        damping_rel: ``λ = damping_rel·tr(Σ)/(mn)`` per layer (for the trajectory: the mean
            of ``tr(Σ)`` over its steps).
    """

    capture: Capture
    capture_step: int
    trajectory: Capture
    layers: tuple[str, ...]
    stream_steps: int
    batch: int
    seeds: int
    every: int
    frequency: int
    beta: float
    timing_sizes: tuple[int, ...]
    timing_repeats: int
    damping_rel: float = 1e-3


PRESETS = {
    "test": Config(
        capture=Capture("mlp", "digits", (20,), 64, ("gradients", "kfac")),
        capture_step=20,
        trajectory=Capture("mlp", "digits", (5, 10, 20), 64, ("gradients",), ("layers/1/w",)),
        layers=("layers/1/w",),
        stream_steps=30,
        batch=8,
        seeds=2,
        every=10,
        frequency=5,
        beta=0.9,
        timing_sizes=(16, 32),
        timing_repeats=5,
    ),
    "quick": Config(
        capture=Capture(
            "mlp", "digits", (100,), 512, ("gradients", "ggn-mc", "kfac"), mc_samples=4
        ),
        capture_step=100,
        trajectory=Capture("mlp", "digits", (20, 40, 60, 80, 100), 512, ("gradients",)),
        layers=("layers/1/w", "layers/0/w"),
        stream_steps=300,
        batch=32,
        seeds=2,
        every=15,
        frequency=10,
        beta=0.98,
        timing_sizes=(64, 128, 256, 512),
        timing_repeats=7,
    ),
    "full": Config(
        capture=Capture(
            "mlp",
            "mnist",
            (500,),
            2048,
            ("gradients", "ggn-mc", "kfac"),
            mc_samples=4,
            model_options=(("hidden", (128,)),),
        ),
        capture_step=500,
        trajectory=Capture(
            "mlp",
            "mnist",
            (100, 200, 300, 400, 500),
            2048,
            ("gradients",),
            model_options=(("hidden", (128,)),),
        ),
        layers=("layers/1/w", "layers/0/w"),
        stream_steps=1000,
        batch=64,
        seeds=4,
        every=20,
        frequency=10,
        beta=0.98,
        timing_sizes=(256, 512, 1024, 2048, 4096),
        timing_repeats=9,
    ),
}

VARIANTS = ("shampoo", "kl_shampoo", "kl_shampoo_instant", "kl_shampoo_eigh")
LABELS = {
    "shampoo": "Shampoo² (EMA)",
    "kl_shampoo": "KL-Shampoo (QR, EMA λ)",
    "kl_shampoo_instant": "KL-Shampoo (QR, instantaneous λ)",
    "kl_shampoo_eigh": "KL-Shampoo (eigh every step)",
}
COLORS = {  # Okabe–Ito names (precond_lab.plotting.OKABE_ITO)
    "shampoo": "orange",
    "kl_shampoo": "blue",
    "kl_shampoo_instant": "vermillion",
    "kl_shampoo_eigh": "bluish_green",
}
STYLES = {"shampoo": ":", "kl_shampoo": "-", "kl_shampoo_instant": "--", "kl_shampoo_eigh": "-."}

# thresholds of the verdicts (stated in each verdict's tolerance)
GAP_ROUNDOFF = 1e-9  # a gap below −GAP_ROUNDOFF·max(1, KL_opt) is an error, not a result
P113_GAP_FRACTION = 0.2  # late KL gap ≤ 20 % of the initial gap
P113_DECREASE_FRACTION = 0.8  # ≥ 80 % of scored intervals decrease in the seed mean
P119_SPEEDUP = 1.5  # eigh ≥ 1.5× a QR refresh at the largest size (whole quartile range)
P119_REL_GAP = 0.1  # QR variant's late KL gap within 10 % of KL_opt of eigh's
P119_COS = 0.02  # and direction cosine within 0.02
P120_MARGIN = 0.05  # EMA's late KL gap < instantaneous's by ≥ 5 % of KL_opt


# ----------------------------------------------------------------------------- variants
def _variants(beta: float, frequency: int, damping: float) -> dict:
    """name -> :class:`~precond_lab.online.OnlineEstimator` (KL variants damped by λ)."""
    from precond_lab import online

    kl = dict(shampoo_beta=beta, frequency=frequency, damping=damping)
    return {
        "shampoo": online.shampoo(shampoo_beta=beta),
        "kl_shampoo": online.kl_shampoo(**kl),
        "kl_shampoo_instant": online.kl_shampoo(**kl, eigenvalues="instant"),
        "kl_shampoo_eigh": online.kl_shampoo(**kl, eigenvalues="eigh"),
    }


def kronecker_member(name: str, state, damping: float):
    """The float64 Kronecker product ``A ⊗ B`` a state is scored as (damping inside).

    Args:
        name: the variant (:data:`VARIANTS`).
        state: its online state.
        damping: ``λ``.

    Returns:
        A :class:`~precond_lab.structures.Kronecker`: for ``shampoo``
        ``(L+nλI) ⊗ (R+mλI) / tr(L+nλI)``; for the KL variants
        ``Q_a diag(λ_a) Q_aᵀ ⊗ Q_b diag(λ_b) Q_bᵀ`` (their eigenvalues carry the damping).
    """
    from precond_lab.structures import Kronecker

    f64 = jnp.float64
    if name == "shampoo":
        left = jnp.asarray(state.left, f64)
        right = jnp.asarray(state.right, f64)
        m, n = left.shape[0], right.shape[0]
        left = 0.5 * (left + left.T) + n * damping * jnp.eye(m, dtype=f64)
        right = 0.5 * (right + right.T) + m * damping * jnp.eye(n, dtype=f64)
        return Kronecker(left, right, 1.0 / jnp.trace(left))
    qa, qb = jnp.asarray(state.left_basis, f64), jnp.asarray(state.right_basis, f64)
    la, lb = jnp.asarray(state.left_values, f64), jnp.asarray(state.right_values, f64)
    left, right = (qa * la[None, :]) @ qa.T, (qb * lb[None, :]) @ qb.T
    return Kronecker(0.5 * (left + left.T), 0.5 * (right + right.T), 1.0)


def checked_gap(kl: float, kl_opt: float, where: str) -> float:
    """``kl − kl_opt``, which must be ≥ 0 up to round-off (the optimum is the family's min).

    Raises:
        ConvergenceError: if the gap is below ``−GAP_ROUNDOFF·max(1, |kl_opt|)``: the
            reference is then not the minimum of the family (an unconverged optimum or
            a state scored outside the Kronecker family).
    """
    gap = float(kl) - float(kl_opt)
    if gap < -GAP_ROUNDOFF * max(1.0, abs(float(kl_opt))):
        raise ConvergenceError(
            f"{where}: KL gap {gap:.3e} < 0 beyond round-off (KL {kl:.10g} vs the damped KL "
            f"optimum {kl_opt:.10g}); the batch optimum must be the minimum of the Kronecker "
            "family the state is scored in"
        )
    return gap


# ------------------------------------------------------------------------------- timing
def _refresh_timings(sizes, repeats: int, seed: int = 0) -> list[timing.Timings]:
    """Interleaved timings of a float32 ``eigh`` and one power step + QR, per size."""
    from precond_lab.linalg import qr_refresh_step, spd_with_spectrum

    eigh = jax.jit(lambda s: jnp.linalg.eigh(s))
    qr = jax.jit(qr_refresh_step)
    rng = np.random.default_rng(seed)
    out = []
    for d in sizes:
        s, q, _ = spd_with_spectrum(int(d), 1e4, rng)
        s = jnp.asarray(s, jnp.float32)
        q0 = jnp.asarray(np.linalg.qr(q + 1e-2 * rng.standard_normal(q.shape))[0], jnp.float32)
        ops = {"eigh": lambda s=s: eigh(s), "qr": lambda s=s, q0=q0: qr(s, q0)}
        out.append(timing.interleaved(ops, repeats=repeats, warmup=2))
    return out


# ------------------------------------------------------------------------------- memory
#: The estimators whose state is counted for P1-41 (grafted Shampoo: Shampoo's factors plus
#: the Adam second moment its grafting keeps).
MEMORY_ESTIMATORS = ("shampoo_grafted", "kl_shampoo", "soap", "kl_soap")
#: Layer shapes counted besides the study's own: a GPT-2-small attention and MLP weight.
MEMORY_SHAPES = ((768, 768), (768, 3072))


def state_floats(name: str, m: int, n: int) -> tuple[int, int]:
    """Floats in an online estimator's state for an ``m×n`` layer, and how many of them
    are a second moment (the states' ``nu`` field), counted from ``jax.eval_shape``
    (no compute).

    Args:
        name: one of :data:`MEMORY_ESTIMATORS`.
        m, n: the layer shape.

    Returns:
        ``(total floats, second-moment floats)``; integer step counters are not counted.
    """
    from precond_lab import online

    factories = {  # grafted Shampoo's state holds its grafting Adam's v
        "shampoo_grafted": (online.shampoo(graft=True),),
        "kl_shampoo": (online.kl_shampoo(),),
        "soap": (online.soap(),),
        "kl_soap": (online.kl_soap(),),
    }
    g = jax.ShapeDtypeStruct((m, n), jnp.float32)
    total = second = 0
    for est in factories[name]:
        state = jax.eval_shape(est.init, g).leaf  # the method's leaf state, as shapes
        for field, value in zip(state._fields, state, strict=True):
            for leaf in jax.tree.leaves(value):
                if not jnp.issubdtype(leaf.dtype, jnp.floating):
                    continue
                size = int(np.prod(leaf.shape))
                total += size
                second += size if field == "nu" else 0  # Adam's / SOAP's second moment
    return total, second


def _memory_table(shapes) -> tuple[np.ndarray, np.ndarray]:
    """``(total, second-moment)`` floats, ``(estimator, shape)`` arrays."""
    tab = np.array([[state_floats(e, m, n) for m, n in shapes] for e in MEMORY_ESTIMATORS])
    return tab[..., 0], tab[..., 1]


# ---------------------------------------------------------------------------------- run


def _layer_gradients(tree, step: int, layer: str) -> np.ndarray:
    node = tree[schema.step_name(step)][layer]
    return np.asarray(schema.layer_samples(node, schema.Kind.GRADIENTS), np.float64)


def _reference(g64: np.ndarray, lam: float) -> dict:
    """The float64 target, its spectrum and the damped KL optimum's divergence."""
    from precond_lab import SampleTarget
    from precond_lab.estimators import kl_optimal
    from precond_lab.metrics import kl_divergence

    target = SampleTarget(jnp.asarray(g64))
    opt = kl_optimal(target, damping=lam)
    kl_opt = float(kl_divergence(target, opt, damping=lam, approx_damping=0.0))
    return {"target": target, "spectrum": target.eigh(vectors=True), "kl_opt": kl_opt}


def _stream_plan(cfg: Config, stream: str) -> list[int]:
    """The captured step each stream step draws from."""
    if stream == "stationary":
        return [int(cfg.capture_step)] * cfg.stream_steps
    steps = list(cfg.trajectory.steps)
    k = len(steps)
    return [int(steps[min(k - 1, t * k // cfg.stream_steps)]) for t in range(cfg.stream_steps)]


def run(config: Config, **overrides) -> xr.Dataset:
    """Score the four variants on a stationary and a training-trajectory stream.

    Args:
        config: a :class:`Config` (e.g. ``PRESETS["quick"]``).
        **overrides: :class:`Config` fields to replace (``dataclasses.replace``), e.g.
            ``run(PRESETS["test"], seeds=2)``.

    Returns:
        Dataset with dims ``(stream, layer, seed, step, variant)``, the batch optimum's KL
        on ``(stream, layer, step)`` and the refresh timings on ``(size, op, repeat)``.

    Raises:
        ConvergenceError: if a gap is negative beyond round-off (:func:`checked_gap`).
    """
    from precond_lab.metrics import cosine_similarity, direction_quality, kl_divergence
    from precond_lab.study import cached_capture

    jax.config.update("jax_enable_x64", True)  # float64 scoring; the streams stay float32
    cfg = dataclasses.replace(config, **overrides) if overrides else config
    layers, seeds, every = list(cfg.layers), cfg.seeds, cfg.every
    t_start = time.perf_counter()
    trees = {
        "stationary": cached_capture(**cfg.capture.kwargs()),
        "trajectory": cached_capture(**cfg.trajectory.kwargs()),
    }
    scored = sorted(set(range(0, cfg.stream_steps, every)) | {cfg.stream_steps - 1})
    shape = (len(STREAMS), len(layers), seeds, len(scored), len(VARIANTS))
    keys = ("kl_divergence", "kl_gap", "cosine_target", "direction_cosine")
    out = {k: np.full(shape, np.nan) for k in keys}
    kl_opt = np.full((len(STREAMS), len(layers), len(scored)), np.nan)
    lam_out = np.zeros((len(STREAMS), len(layers)))
    source = np.zeros((len(STREAMS), len(scored)), np.int64)
    shapes = []
    seconds = np.zeros((len(STREAMS), len(layers), len(VARIANTS)))
    for ist, stream in enumerate(STREAMS):
        plan = _stream_plan(cfg, stream)
        source[ist] = [plan[t] for t in scored]
        for il, layer in enumerate(layers):
            pools = {s: _layer_gradients(trees[stream], s, layer) for s in sorted(set(plan))}
            m, n = next(iter(pools.values())).shape[1:]
            if ist == 0:
                shapes.append(f"{m}x{n}")
            lam = (
                cfg.damping_rel
                * float(np.mean([np.einsum("kij,kij->", p, p) / len(p) for p in pools.values()]))
                / (m * n)
            )
            lam_out[ist, il] = lam
            refs = {s: _reference(p, lam) for s, p in pools.items()}
            kl_opt[ist, il] = [refs[plan[t]]["kl_opt"] for t in scored]
            variants = _variants(cfg.beta, cfg.frequency, lam)
            feeds = []
            for js in range(seeds):
                rng = np.random.default_rng(1000 * (1 + ist) + js)
                idx = [rng.integers(0, len(pools[s]), size=cfg.batch) for s in plan]
                feeds.append(
                    jnp.asarray(
                        np.stack([pools[s][i] for s, i in zip(plan, idx, strict=True)]), jnp.float32
                    )
                )
            for js, feed in enumerate(feeds):
                for kv, name in enumerate(VARIANTS):
                    est = variants[name]
                    t0 = time.perf_counter()
                    state = est.init(feed[0])
                    row = 0
                    for t in range(cfg.stream_steps):
                        if t > 0:
                            state = est.update(state, feed[t])
                        if t not in scored:
                            continue
                        ref = refs[plan[t]]
                        s = kronecker_member(name, state, lam)
                        kl = float(kl_divergence(ref["target"], s, damping=lam, approx_damping=0.0))
                        i = (ist, il, js, row, kv)
                        out["kl_divergence"][i] = kl
                        out["kl_gap"][i] = checked_gap(
                            kl, ref["kl_opt"], f"{stream} {layer} seed {js} step {t} {name}"
                        )
                        out["cosine_target"][i] = float(cosine_similarity(ref["target"], s))
                        q = direction_quality(  # the same member against Σ + λI
                            ref["target"],
                            s,
                            jnp.asarray(feed[t].mean(0), jnp.float64),
                            p=0.5,
                            damping=lam,
                            approx_damping=0.0,
                            spectrum=ref["spectrum"],
                        )
                        out["direction_cosine"][i] = float(q.cosine)
                        row += 1
                    seconds[ist, il, kv] += time.perf_counter() - t0
    timings = _refresh_timings(cfg.timing_sizes, cfg.timing_repeats)
    secs = np.array([[t.seconds[op] for op in ("eigh", "qr")] for t in timings])
    ratios = [timing.ratio(t, "eigh", "qr") for t in timings]
    mem_shapes = [tuple(int(x) for x in sh.split("x")) for sh in shapes] + list(MEMORY_SHAPES)
    mem_total, mem_second = _memory_table(mem_shapes)
    dims = ("stream", "layer", "seed", "step", "variant")
    ds = xr.Dataset(
        {k: (dims, v) for k, v in out.items()},
        coords={
            "stream": list(STREAMS),
            "layer": list(layers),
            "seed": np.arange(seeds),
            "step": scored,
            "variant": list(VARIANTS),
            "size": list(cfg.timing_sizes),
            "op": ["eigh", "qr"],
            "repeat": np.arange(cfg.timing_repeats),
            "memory_estimator": list(MEMORY_ESTIMATORS),
            "memory_shape": [f"{m}x{n}" for m, n in mem_shapes],
        },
    )
    ds["state_floats"] = (("memory_estimator", "memory_shape"), mem_total)
    ds["second_moment_floats"] = (("memory_estimator", "memory_shape"), mem_second)
    ds["state_floats"].attrs["long_name"] = "floats in the online state (jax.eval_shape)"
    ds["kl_optimal_divergence"] = (("stream", "layer", "step"), kl_opt)
    ds["source_step"] = (("stream", "step"), source)
    ds["damping"] = (("stream", "layer"), lam_out)
    ds["layer_shape"] = ("layer", shapes)
    ds["run_seconds"] = (("stream", "layer", "variant"), seconds)
    ds["refresh_seconds"] = (("size", "op", "repeat"), secs)
    ds["refresh_median_s"] = (("size", "op"), np.median(secs, axis=-1))
    ds["refresh_q25_s"] = (("size", "op"), np.quantile(secs, 0.25, axis=-1))
    ds["refresh_q75_s"] = (("size", "op"), np.quantile(secs, 0.75, axis=-1))
    ds["speedup_median"] = ("size", [r.median for r in ratios])
    ds["speedup_q25"] = ("size", [r.low for r in ratios])
    ds["speedup_q75"] = ("size", [r.high for r in ratios])
    ds["kl_gap"].attrs["long_name"] = (
        "KL(Σ+λI ‖ A⊗B) of the state's Kronecker member − that of the damped KL optimum (≥ 0)"
    )
    ds["direction_cosine"].attrs["long_name"] = "cos((A⊗B)^{-1/2}ḡ_t, (Σ+λI)^{-1/2}ḡ_t)"
    ds["source_step"].attrs["long_name"] = "captured training step the stream draws from"
    ds["speedup_median"].attrs["long_name"] = "eigh / (power step + QR), per interleaved round"
    ds.attrs.update(_attrs(cfg, t_start))
    return ds


def _attrs(cfg: Config, t_start: float) -> dict:
    capture = cfg.capture
    return make_attrs(
        TITLE,
        preset=cfg.preset_name(PRESETS),
        source=f"{capture.model}/{capture.dataset} capture",
        study=NAME,
        model=capture.model,
        dataset=capture.dataset,
        capture_step=int(cfg.capture_step),
        trajectory_steps=",".join(str(s) for s in cfg.trajectory.steps),
        num_samples=int(capture.num_samples),
        stream_stationary="i.i.d. mini-batches (with replacement) of per-example gradients "
        "from one captured step, fed as per-example batches",
        stream_trajectory="the same, drawn from the trajectory capture's steps in training "
        "order (equal segments), scored against the current step's target",
        stream_seeds="1000·(1 + stream index) + seed",
        batch=int(cfg.batch),
        beta=float(cfg.beta),
        frequency=int(cfg.frequency),
        damping_rel=float(cfg.damping_rel),
        damping_rule="lambda = damping_rel * mean tr(Sigma)/(m n) over the stream's steps",
        scoring="every state as a float64 Kronecker member with its damping inside the "
        "factors, KL(Sigma + lambda I || A kron B); gap >= 0 asserted",
        timing=f"timing.interleaved, {int(cfg.timing_repeats)} rounds after 2 warm-up calls: "
        "jitted float32 eigh vs one power step + QR",
        timing_device=str(jax.devices()[0].device_kind),
        elapsed_s=float(time.perf_counter() - t_start),
    )


# --------------------------------------------------------------------------------- plot
def _band(ax, x, da, **kw):
    """Seed mean as a line, the min–max over seeds as a band; non-positive values missing."""
    y = da.where(da > 0)
    mean = y.mean("seed")
    line = ax.plot(x, mean, **kw)[0]
    ax.fill_between(x, y.min("seed"), y.max("seed"), color=line.get_color(), alpha=0.18, lw=0)
    return line


def plot(ds: xr.Dataset, figdir) -> list[Path]:
    """KL gap and direction cosine per stream and layer; the refresh cost per size."""
    from precond_lab.plotting import OKABE_ITO, figure, legend, style
    from precond_lab.study import save_figures

    figures = {}
    nseed = ds.sizes["seed"]
    with style():
        nl = ds.sizes["layer"]
        fig, axes = figure(4, nl, panel=(3.4, 2.2), sharex=True)
        for ist, stream in enumerate(ds.stream.values):
            switches = np.flatnonzero(np.diff(ds["source_step"].sel(stream=stream).values))
            for il, layer in enumerate(ds.layer.values):
                sel = dict(stream=stream, layer=layer)
                opt = ds["kl_optimal_divergence"].sel(**sel)
                ax_gap, ax_cos = axes[2 * ist, il], axes[2 * ist + 1, il]
                for v in ds.variant.values:
                    kw = dict(color=OKABE_ITO[COLORS[v]], ls=STYLES[v], label=LABELS[v], lw=1.3)
                    _band(ax_gap, ds.step, ds["kl_gap"].sel(**sel, variant=v) / opt, **kw)
                    _band(ax_cos, ds.step, ds["direction_cosine"].sel(**sel, variant=v), **kw)
                for k in switches:
                    for ax in (ax_gap, ax_cos):
                        ax.axvline(float(ds.step[k + 1]), color="0.75", lw=0.6, zorder=0)
                shape = str(ds["layer_shape"].sel(layer=layer).values)
                ax_gap.set_title(f"{stream}: {layer} ({shape})")
                ax_gap.set_yscale("log")
                ax_gap.set_ylabel("KL gap / KL_opt")
                ax_cos.set_ylabel("direction cos (p = ½)")
            for il in range(nl):
                axes[-1, il].set_xlabel("stream step")
        fig.suptitle(
            f"line: mean, band: min–max over n = {nseed} stream seeds; "
            "grey: the trajectory stream moves to the next captured step"
        )
        legend(fig, axes, ncols=2)
        figures[f"{NAME}_kl_gap"] = fig

        fig, axes = figure(1, 1, panel=(4.2, 3.2))
        ax = axes[0, 0]
        reps = ds.sizes["repeat"]
        for op, lab, mk, col in (
            ("eigh", "eigh (float32)", "o-", "vermillion"),
            ("qr", "power step + QR", "s--", "blue"),
        ):
            med = ds["refresh_median_s"].sel(op=op).values
            err = np.stack(
                [
                    med - ds["refresh_q25_s"].sel(op=op).values,
                    ds["refresh_q75_s"].sel(op=op).values - med,
                ]
            )
            ax.errorbar(
                ds["size"],
                med,
                yerr=err,
                fmt=mk,
                color=OKABE_ITO[col],
                capsize=2,
                label=f"{lab}: median, quartiles of {reps} rounds",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ds["size"].values, [str(int(d)) for d in ds["size"].values])
        ax.minorticks_off()
        ax.set_xlabel("factor size d")
        ax.set_ylabel("seconds per refresh")
        ax.set_title(f"basis refresh cost on {ds.attrs.get('timing_device', '?')}")
        ax.legend()
        figures[f"{NAME}_refresh_cost"] = fig
    return save_figures(figures, figdir)


# ----------------------------------------------------------------------------- verdicts
def _late(da: xr.DataArray) -> xr.DataArray:
    """Mean over seeds and the last quarter of the scored steps."""
    n = da.sizes["step"]
    return da.isel(step=slice(n - max(1, n // 4), None)).mean(("seed", "step"))


def _rel(ds: xr.Dataset, variant: str, stream: str) -> xr.DataArray:
    """Late KL gap / KL_opt per layer (KL_opt of the same scored steps)."""
    sel = ds.sel(stream=stream)
    n = sel.sizes["step"]
    late = slice(n - max(1, n // 4), None)
    gap = sel["kl_gap"].sel(variant=variant).isel(step=late).mean(("seed", "step"))
    return gap / sel["kl_optimal_divergence"].isel(step=late).mean("step")


def _cos(ds: xr.Dataset, variant: str, stream: str) -> xr.DataArray:
    return _late(ds["direction_cosine"].sel(variant=variant, stream=stream))


def verdicts(ds: xr.Dataset) -> list[Row]:
    return [_p1_13(ds), _p1_19(ds), _p1_20(ds), _p1_41(ds)]


_SETTING = (
    "estimation only: online states scored against the batch KL optimum on streams of "
    "captured per-example gradients of a small MLP on digits, instead of LM training"
)


def _min_gap(ds: xr.Dataset) -> str:
    rel = ds["kl_gap"] / ds["kl_optimal_divergence"]
    return f"smallest gap/KL_opt over all cells {float(rel.min()):.2e} (≥ 0 by construction)"


def _p1_13(ds):
    st = ds.sel(stream="stationary")
    gap = st["kl_gap"].sel(variant="kl_shampoo").mean("seed")  # (layer, step)
    ok_all, partial_any, parts = True, False, []
    for il, layer in enumerate(ds.layer.values):
        g = gap.isel(layer=il).values
        g0 = g[0]
        late = float(_late(st["kl_gap"].sel(variant="kl_shampoo").isel(layer=il)))
        opt = float(st["kl_optimal_divergence"].isel(layer=il, step=-1))
        frac = late / g0 if g0 > 0 else np.inf
        dec = float(np.mean(np.diff(g) < 0))
        sh_late = float(_late(st["kl_gap"].sel(variant="shampoo").isel(layer=il)))
        traj = float(_rel(ds, "kl_shampoo", "trajectory").isel(layer=il))
        ok = frac <= P113_GAP_FRACTION and dec >= P113_DECREASE_FRACTION
        ok_all &= ok
        partial_any |= late < g0
        parts.append(
            f"{layer}: KL gap {g0:.3g} → {late:.3g} (late mean; {100 * frac:.1f}% of initial, "
            f"{100 * late / opt:.1f}% of KL_opt={opt:.4g}); {100 * dec:.0f}% of intervals "
            f"decrease; Shampoo² late gap {sh_late:.3g}; trajectory stream late gap/KL_opt "
            f"{traj:.3f}"
        )
    return Row(
        "P1-13",
        PAPER,
        "Claim 3 (Sec. 3, per papernotes)",
        "KL-Shampoo's EMA factor updates are a stochastic proximal-gradient step on the KL "
        "objective: on a stationary stream they approach the batch KL optimum.",
        judge(ok_all, partial_any),
        "; ".join(parts) + f" ({ds.sizes['seed']} stream seeds, batch {ds.attrs.get('batch')}, β="
        f"{ds.attrs.get('beta')}, T={ds.attrs.get('frequency')}; {_min_gap(ds)}).",
        "gap = KL(Σ+λI‖A⊗B) of the state's damped Kronecker member minus the damped KL "
        f"optimum's (≥ 0). Holds if on the stationary stream the late gap (seed mean, last "
        f"quarter) ≤ {P113_GAP_FRACTION:.0%} of the initial gap and ≥ "
        f"{P113_DECREASE_FRACTION:.0%} of scored intervals decrease, on every layer; partial "
        "if it only decreases. No convergence guarantee is claimed by P1.",
        kind=TestKind.PROXY,
        setting=_SETTING,
    )


_SPEED_WORDS = {"above": "all above", "below": "all below", "inconclusive": "straddling"}


def _p1_19(ds):
    sizes = ds["size"].values
    med, lo, hi = (ds[k].values for k in ("speedup_median", "speedup_q25", "speedup_q75"))
    last = timing.Ratio(float(med[-1]), float(lo[-1]), float(hi[-1]), ())
    speed = timing.ratio_verdict(last, P119_SPEEDUP)
    qr = _rel(ds, "kl_shampoo", "stationary")
    eg = _rel(ds, "kl_shampoo_eigh", "stationary")
    cq, ce = _cos(ds, "kl_shampoo", "stationary"), _cos(ds, "kl_shampoo_eigh", "stationary")
    good = bool(np.all(qr - eg <= P119_REL_GAP) and np.all(ce - cq <= P119_COS))
    reps = ds.sizes["repeat"]
    cost = ", ".join(
        f"d={int(d)}: eigh {1e3 * float(ds['refresh_median_s'].sel(size=d, op='eigh')):.2f} ms "
        f"vs QR {1e3 * float(ds['refresh_median_s'].sel(size=d, op='qr')):.2f} ms "
        f"(ratio {med[i]:.2f}× [{lo[i]:.2f}–{hi[i]:.2f}])"
        for i, d in enumerate(sizes)
    )
    qual = "; ".join(
        f"{layer}: late KL gap/KL_opt QR {float(qr[i]):.3f} vs eigh {float(eg[i]):.3f}, "
        f"direction cos QR {float(cq[i]):.3f} vs eigh {float(ce[i]):.3f}"
        for i, layer in enumerate(ds.layer.values)
    )
    if speed == "inconclusive":
        verdict = INCONCLUSIVE
    else:
        cheap = speed == "above"
        verdict = judge(cheap and good, cheap or good)
    return Row(
        "P1-19",
        PAPER,
        "Abstract v7; Fig. 1",
        "A QR-based eigenbasis refresh (power step + QR every T) costs less than eigh and "
        "keeps KL-Shampoo's preconditioner as good as eigh every step.",
        verdict,
        f"refresh cost on {ds.attrs.get('timing_device', '?')} (median of {reps} interleaved "
        f"rounds, per-round ratio quartiles): {cost}; at the largest size the quartiles are "
        f"{_SPEED_WORDS[speed]} {P119_SPEEDUP}×. Quality (stationary stream): {qual}.",
        f"holds if the eigh/QR ratio's whole quartile range is ≥ {P119_SPEEDUP}× at the largest "
        f"size and the QR variant's late KL gap/KL_opt is within {P119_REL_GAP} and its "
        f"direction cosine within {P119_COS} of eigh-every-step on every layer; partial if "
        "only one of the two; inconclusive if the ratio's quartiles straddle the threshold.",
        kind=TestKind.PROXY,
        setting="CPU float32 timings of one refresh (the paper: GPU per-iteration runtime of "
        "LM training); " + _SETTING,
    )


def _p1_20_stream(ds, stream):
    ema, ins = _rel(ds, "kl_shampoo", stream), _rel(ds, "kl_shampoo_instant", stream)
    ce, ci = _cos(ds, "kl_shampoo", stream), _cos(ds, "kl_shampoo_instant", stream)
    better_kl = (ins - ema).values >= P120_MARGIN
    better_dir = (ce - ci).values >= 0
    text = "; ".join(
        f"{layer}: late KL gap/KL_opt EMA {float(ema[i]):.3f} vs instantaneous "
        f"{float(ins[i]):.3f}, direction cos EMA {float(ce[i]):.3f} vs {float(ci[i]):.3f}"
        for i, layer in enumerate(ds.layer.values)
    )
    return better_kl, better_dir, text


def _p1_20(ds):
    kl_t, dir_t, text_t = _p1_20_stream(ds, "trajectory")
    kl_s, dir_s, text_s = _p1_20_stream(ds, "stationary")
    ok = bool(np.all(kl_t) and np.all(dir_t))
    verdict = judge(ok, bool(np.any(kl_t) or np.any(dir_t)))
    if verdict == FAILS and (np.any(kl_s) or np.any(dir_s)):
        verdict = PARTIAL
    note = (
        ""
        if verdict == HOLDS
        else " Instantaneous λ = diag(QᵀSQ) re-reads the whole accumulated factor in the "
        "current basis; where the basis rotates slowly between refreshes it does not lag."
    )
    return Row(
        "P1-20",
        PAPER,
        "Sec. on KL-Shampoo's eigenvalue estimation (per papernotes)",
        "KL-Shampoo's EMA eigenvalues are crucial: instantaneous estimates diag(QᵀSQ) in the "
        "stale QR basis give a worse preconditioner.",
        verdict,
        f"trajectory stream (steps {ds.attrs.get('trajectory_steps')} in order): {text_t}. "
        f"Stationary stream: {text_s}." + note,
        f"decided on the trajectory stream (it mirrors P1's ablation of the eigenvalue "
        f"estimate, run there inside LM training): holds if on every layer the instantaneous "
        f"variant's late KL gap exceeds EMA's by ≥ {P120_MARGIN}·KL_opt and EMA's direction "
        "cosine is not lower; partial if so on some layer or one metric (on either stream).",
        kind=TestKind.PROXY,
        setting=_SETTING + "; P1 compares training losses",
    )


def _p1_41(ds):
    tot, sec = ds["state_floats"], ds["second_moment_floats"]
    ok, parts = True, []
    for shape in ds["memory_shape"].values:
        m, n = (int(x) for x in str(shape).split("x"))
        t = {
            str(e): int(tot.sel(memory_estimator=e, memory_shape=shape))
            for e in tot["memory_estimator"].values
        }
        s = {
            str(e): int(sec.sel(memory_estimator=e, memory_shape=shape))
            for e in sec["memory_estimator"].values
        }
        ok &= s["kl_shampoo"] == 0 and s["soap"] == m * n and s["shampoo_grafted"] == m * n
        parts.append(
            f"{shape}: KL-Shampoo {t['kl_shampoo']:,} (second moment {s['kl_shampoo']}), "
            f"SOAP {t['soap']:,} ({s['soap']:,}), grafted Shampoo {t['shampoo_grafted']:,} "
            f"({s['shampoo_grafted']:,}), KL-SOAP {t['kl_soap']:,} ({s['kl_soap']:,})"
        )
    return claim_verdict(
        "P1-41",
        judge(ok),
        "floats per layer state, counted with jax.eval_shape of the optimisers' own per-leaf "
        "states (precond_lab.methods; the online estimators keep the same): momentum (m·n, "
        "kept by all), factors, eigenbases or Shampoo's stored roots, eigenvalues, Adam's "
        "second moment where kept (grafted Shampoo's grafting v), SOAP's scalar bias "
        "correction: " + "; ".join(parts) + ".",
        "holds if, at every shape, KL-Shampoo's state has no second moment and SOAP's and "
        "grafted Shampoo's states each hold one (m·n floats); a count, no training.",
        kind=TestKind.PAPER,
    )
