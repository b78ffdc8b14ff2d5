"""The study framework: claims, verdicts, the ``reproduce`` runner and its report.

A *study* is a module in the top-level ``studies/`` folder of a clone that defines

* ``NAME`` (str), ``TITLE`` (str), a frozen ``Config`` dataclass and
  ``PRESETS = {"test": Config(...), "quick": ..., "full": ...}``;
* ``run(config, **overrides) -> xarray.Dataset`` — the measurements, with provenance
  attributes;
* ``plot(ds, figdir) -> list[pathlib.Path]`` — figures written into ``figdir``;
* ``verdicts(ds) -> list[Row]`` — one row per claim it covers, decided from ``ds``; each
  claim id is registered in ``precond_lab.claims`` (``claim_verdict`` fills the
  paper, location and statement from there) and each row says its ``TestKind``.

``reproduce`` imports each study, runs the chosen preset, saves the Dataset as netCDF,
draws the figures and writes a Markdown report (studies not run this time, e.g. with
``--only``, keep their section, rebuilt from their saved Dataset, since verdicts depend on
the Dataset alone) with a table (claim, paper, location, test kind, verdict, key numbers,
tolerance) linked to ``docs/claims.md`` and the figures embedded. Registered claims that no
verdict covers stay in the table as "not yet tested" with the reason (``untested``).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from . import claims
from ._atomic import atomic_write, atomic_write_text
from .claims import TestKind
from .provenance import cache_root, make_attrs

__all__ = [
    "Verdict",
    "Row",
    "Config",
    "Rule",
    "Outcome",
    "dataset",
    "grid",
    "extra_attrs",
    "verdicts_from",
    "pairs_outcome",
    "on_comparison",
    "verdict_of",
    "unresolved_note",
    "HOLDS",
    "FAILS",
    "PARTIAL",
    "UNTESTED_VERDICT",
    "INCONCLUSIVE",
    "NOT_TESTABLE_HERE",
    "REPORTED",
    "TestKind",
    "UNTESTED",
    "untested",
    "claim_verdict",
    "judge",
    "by_claim",
    "save_figures",
    "cached_capture",
    "capture_targets",
    "repo_root",
    "run_preset",
    "study_modules",
    "reproduce",
    "write_report",
]


class Verdict(enum.StrEnum):
    """What a study concludes about one claim (a row's ``verdict``).

    A ``StrEnum``: each member is its text (``Verdict.HOLDS == "holds"``), so saved reports
    and comparisons with the words keep working.
    """

    HOLDS = "holds"
    FAILS = "does not hold"
    PARTIAL = "partially holds"
    #: The evidence cannot decide (e.g. an interval or a timing spread straddles the threshold).
    INCONCLUSIVE = "inconclusive"
    #: The claim cannot be tested on this device (the evidence says why; kind NOT_TESTABLE).
    NOT_TESTABLE_HERE = "not testable here"
    UNTESTED = "not yet tested"
    #: A comparison given with its numbers where the claim forces no verdict.
    REPORTED = "reported"
    ERROR = "error"


HOLDS = Verdict.HOLDS
FAILS = Verdict.FAILS
PARTIAL = Verdict.PARTIAL
UNTESTED_VERDICT = Verdict.UNTESTED
INCONCLUSIVE = Verdict.INCONCLUSIVE
NOT_TESTABLE_HERE = Verdict.NOT_TESTABLE_HERE
REPORTED = Verdict.REPORTED
ERROR = Verdict.ERROR


@dataclasses.dataclass(frozen=True)
class Row:
    """One report row: the answer to one claim on this data.

    Attributes:
        claim: the claim's id in the claims registry (``precond_lab.claims``, e.g.
            ``"P3-1"``, ``"D9"``).
        paper: which paper (``"P3 Morwani et al. 2025"``), or ``"derived"``.
        location: where the paper states it (as far as known).
        statement: the claim, in one sentence.
        verdict: a ``Verdict`` (its text is accepted and converted; other text is an
            error).
        evidence: the key numbers behind the verdict.
        tolerance: the threshold used to decide.
        kind: what kind of test this row is (``TestKind``), required (keyword); a row
            given ``None`` is shown as an error in the report.
        setting: for a proxy, how the setting differs from the paper's (keyword).
    """

    claim: str
    paper: str
    location: str
    statement: str
    verdict: Verdict
    evidence: str
    tolerance: str = ""
    kind: TestKind | None = dataclasses.field(kw_only=True)
    setting: str = dataclasses.field(default="", kw_only=True)

    def __post_init__(self) -> None:
        try:
            verdict = Verdict(self.verdict)
        except ValueError:
            raise ValueError(
                f"claim {self.claim}: verdict {self.verdict!r} is not one of "
                f"{', '.join(repr(v.value) for v in Verdict)}; use precond_lab.study.Verdict"
            ) from None
        object.__setattr__(self, "verdict", verdict)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of a study's frozen configuration dataclass.

    A study writes ``@dataclasses.dataclass(frozen=True) class Config(study.Config)`` with
    its fields, and ``PRESETS = {"test": Config(...), "quick": ..., "full": ...}``.
    """

    def replace(self, **overrides: Any):
        """A copy with fields replaced; an unknown field is a ``TypeError`` naming them."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no field {', '.join(unknown)}; its fields: "
                f"{', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **overrides)

    def preset_name(self, presets: Mapping[str, Any]) -> str:
        """The name of the preset equal to this configuration, else ``"custom"``."""
        return next((k for k, v in presets.items() if v == self), "custom")

    def to_attrs(self, prefix: str = "config_") -> dict[str, Any]:
        """The fields as netCDF-safe attributes (``config_<field>``; nested values as JSON)."""
        import json

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                value = int(value)
            elif not isinstance(value, (int, float, str)):
                plain = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                value = json.dumps(plain, default=str, sort_keys=True)
            out[prefix + f.name] = value
        return out


def dataset(
    data_vars: Mapping[str, Any],
    coords: Mapping[str, Any] | None = None,
    *,
    title: str,
    name: str,
    config: Config | None = None,
    presets: Mapping[str, Any] | None = None,
    started: float | None = None,
    **attrs: Any,
):
    """A study's Dataset with its provenance: the one place a study's layout is assembled.

    Args:
        data_vars: ``{name: DataArray or (dims, values)}``.
        coords: coordinates.
        title: the study's title; name: its ``NAME``.
        config: its configuration (stored as ``config_*`` attributes) and ``presets`` to
            name it by.
        started: ``time.perf_counter()`` at the start (stores ``elapsed_s``).
        **attrs: further attributes (``make_attrs`` makes them netCDF-safe).
    """
    import xarray as xr

    extra = dict(attrs)
    if config is not None:
        extra.update(config.to_attrs())
        extra.setdefault("preset", config.preset_name(presets or {}))
    if started is not None:
        extra["elapsed_s"] = float(time.perf_counter() - started)
    ds = xr.Dataset(dict(data_vars), coords=dict(coords or {}))
    ds.attrs.update(make_attrs(title, study=name, **extra))
    return ds


def grid(
    coords: Mapping[str, Sequence[Any]],
    fn: Callable[..., Mapping[str, Any]],
    inner: Mapping[str, Sequence[Any]] | None = None,
):
    """The one run loop of a study: ``fn(**point)`` at every point of a coordinate grid.

    Args:
        coords: ``{dim: values}``; the points are their Cartesian product, the last ``dim``
            varying fastest (so ``fn`` can cache work shared by the outer ones).
        fn: ``fn(**point) -> {variable: value}`` (or an ``xarray.Dataset``); a value is a
            scalar, an array whose dimensions are ``inner``'s (in order; trailing ones may be
            left out), a ``(dims, array)`` pair naming some of ``inner``'s dimensions, or a
            ``DataArray``, which keeps its own dimensions and coordinates (the same shape at
            every point). A point may leave variables out (e.g. a model with fewer layers):
            they are NaN there (floats), -1 (integers, booleans as int8) or ``""`` (text).
        inner: ``{dim: values}`` of the arrays ``fn`` returns (e.g. ``{"step": steps}``).

    Returns:
        A Dataset with each variable on ``(*coords, *its inner dims)``; no provenance (see
        ``dataset``).

    Raises:
        ValueError: a grid dimension is empty, or ``fn`` returns a value whose shape does not
            match the inner dimensions.
    """
    import itertools

    import numpy as np
    import xarray as xr

    coords, inner = dict(coords), dict(inner or {})
    if not coords or any(len(v) == 0 for v in coords.values()):
        raise ValueError(f"grid: every dimension needs values, got {list(coords)}")
    names, out, named = list(coords), {}, {}
    shape = tuple(len(v) for v in coords.values())
    for index in itertools.product(*(range(n) for n in shape)):
        point = {d: coords[d][i] for d, i in zip(names, index, strict=True)}
        for var, value in fn(**point).items():
            if isinstance(value, xr.DataArray):  # named dims: its own, with its coordinates
                dims = list(value.dims)
                for d in dims:
                    named[d] = value[d].values if d in value.coords else np.arange(value.sizes[d])
                value = value.values
                if var in out and value.shape != out[var][1].shape[len(shape) :]:
                    raise ValueError(
                        f"grid: {var} at {point} has shape {value.shape}; at the first point "
                        f"{out[var][1].shape[len(shape) :]}"
                    )
            else:
                if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], tuple):
                    dims, value = list(value[0]), np.asarray(value[1])
                    unknown = [d for d in dims if d not in inner]
                    if unknown:
                        raise ValueError(f"grid: {var} names dims {unknown} not in inner")
                else:
                    value = np.asarray(value)
                    dims = list(inner)[: value.ndim]
                if value.shape != tuple(len(inner[d]) for d in dims):
                    raise ValueError(
                        f"grid: {var} at {point} has shape {value.shape}; expected scalars or "
                        f"arrays over {dict((d, len(v)) for d, v in inner.items())}"
                    )
            if var in out and out[var][0] != names + dims:
                raise ValueError(f"grid: {var} changes its dims at {point}")
            if var not in out:  # missing points: NaN (floats), -1 (integers), "" (text)
                kind = value.dtype.kind
                dtype, fill = {"f": (value.dtype, np.nan), "c": (value.dtype, np.nan),
                               "i": (np.int64, -1), "u": (np.int64, -1),
                               "b": (np.int8, -1)}.get(kind, (object, ""))  # fmt: skip
                out[var] = (names + dims, np.full(shape + value.shape, fill, dtype))
            out[var][1][index] = value
    return xr.Dataset(out, coords={**named, **coords, **inner})


def extra_attrs(ds) -> dict[str, Any]:
    """``ds``'s attributes other than the provenance ``dataset`` writes itself (to carry a
    library Dataset's own attributes, e.g. a tuning study's, into a study's Dataset)."""
    own = set(make_attrs()) | {"title", "study", "preset", "seed", "elapsed_s"}
    return {k: v for k, v in ds.attrs.items() if k not in own and not k.startswith("config_")}


class Outcome(NamedTuple):
    """What a rule's ``decide`` returns: the verdict and the numbers behind it; ``tolerance``
    and ``setting`` when they depend on the data (added to / replacing the rule's)."""

    verdict: Verdict
    evidence: str
    tolerance: str = ""
    setting: str | None = None


@dataclasses.dataclass(frozen=True)
class Rule:
    """A declarative verdict rule: a registered claim, its test kind and how ``ds`` decides it.

    The statement, paper and location come from the claims registry (``claim_verdict``);
    a study lists its rules and ``verdicts_from(ds, RULES)`` gives its rows.

    Attributes:
        claim: a registered claim id (checked when the rule is made).
        kind: the row's test kind.
        decide: ``ds -> Outcome`` (or a ``(verdict, evidence)`` pair), or None when the
            data has nothing on the claim.
        tolerance: the threshold, as the row states it.
        setting: for a proxy, how the setting differs (default: the registry's).
        statement: what the row tests, if narrower than the registered statement.
    """

    claim: str
    kind: TestKind
    decide: Callable[[Any], Outcome | tuple | None]
    tolerance: str = ""
    setting: str | None = None
    statement: str | None = None

    def __post_init__(self) -> None:
        claims.claim(self.claim)  # KeyError naming the id if it is not registered
        if not callable(self.decide):
            raise TypeError(f"rule {self.claim}: decide must be a function of the Dataset")

    def row(self, ds) -> Row | None:
        """Apply the rule to ``ds``: its row, None when ``decide`` returns None (the data has
        nothing on this claim, e.g. a preset without that comparison), or an ``ERROR`` row
        saying why when the rule raises."""
        try:
            out = self.decide(ds)
        except Exception as err:  # noqa: BLE001  (one broken rule is reported, not fatal)
            out = (Verdict.ERROR, f"the rule failed: {type(err).__name__}: {err}")
        if out is None:
            return None
        out = Outcome(*out)
        tolerance = "; ".join(t for t in (out.tolerance, self.tolerance) if t)
        return claim_verdict(
            self.claim,
            out.verdict,
            out.evidence,
            tolerance,
            kind=self.kind,
            setting=out.setting if out.setting is not None else self.setting,
            statement=self.statement,
        )


def verdicts_from(ds, rules: Iterable[Rule]) -> list[Row]:
    """The rows of ``rules`` applied to ``ds``, in order (rules with nothing to say left out)."""
    return [row for r in rules if (row := r.row(ds)) is not None]


def on_comparison(match: str, decide, setting, *, present: bool = True):
    """A rule's ``decide`` on one comparison of a stacked tuning Dataset (``tuning.stack``).

    The comparison is the first whose name starts with ``match``; ``decide(name, ds)`` sees
    its Dataset (``tuning.unstack``), and the row gets the protocol's tolerance
    (``tasks.tolerance``) and ``setting(ds)``. With ``present=False`` the rule speaks only
    when no such comparison exists (``decide(None, None)``, e.g. "not testable here").
    """
    from .tasks import tolerance
    from .tuning import unstack

    def rule(ds):
        name = next((c for c in ds["comparison"].values.tolist() if c.startswith(match)), None)
        if (name is not None) != present:
            return None
        if not present:
            return decide(None, None)
        d = unstack(ds, name)
        out = Outcome(*decide(name, d))
        return Outcome(out.verdict, out.evidence, tolerance(d), setting(d))

    return rule


def pairs_outcome(ds, pairs: Iterable[tuple[str, str]], prefix: str = "") -> Outcome:
    """A "lower loss" claim decided on a tuning Dataset: ``tasks.pair`` for each ``(a, b)``,
    the verdict from the decisions (``verdict_of``), the pairs' texts as evidence."""
    from .tasks import pair

    decisions, texts = zip(*(pair(ds, a, b) for a, b in pairs), strict=True)
    v = verdict_of(decisions)
    return Outcome(v, f"{unresolved_note(v)}{prefix}" + "; ".join(texts))


def judge(ok: bool, partial: bool = False) -> Verdict:
    """``holds`` if ``ok``, else ``partially holds`` if ``partial``, else ``does not hold``."""
    return HOLDS if ok else (PARTIAL if partial else FAILS)


def verdict_of(decisions) -> Verdict:
    """A "lower loss" claim's verdict from its pairwise ``tuning.Decision``s.

    ``holds``: all better; ``does not hold``: any worse, or all ties (no difference of
    practical size); ``partially holds``: better and ties only; ``inconclusive`` (unresolved
    at this budget): an unresolved pair and none worse.
    """
    from .tuning import Decision

    d = list(decisions)
    if d and all(x == Decision.BETTER for x in d):
        return HOLDS
    if any(x == Decision.WORSE for x in d) or (d and all(x == Decision.TIE for x in d)):
        return FAILS
    if any(x == Decision.UNRESOLVED for x in d):
        return INCONCLUSIVE
    return PARTIAL


def unresolved_note(verdict: str) -> str:
    return "unresolved at this budget; " if verdict == INCONCLUSIVE else ""


def by_claim(verdicts) -> dict[str, Row]:
    """``{claim id: Verdict}`` for a study's verdicts."""
    return {v.claim: v for v in verdicts}


def save_figures(figures: dict, figdir) -> list[Path]:
    """Write ``{stem: Figure}`` as PNG and PDF into ``figdir``; return the paths."""
    from .plotting import save

    figdir = Path(figdir)
    paths = []
    for stem, fig in figures.items():
        paths += save(fig, figdir / stem)
    return paths


def claim_verdict(
    claim_id: str,
    verdict: str,
    evidence: str,
    tolerance: str = "",
    *,
    kind: TestKind,
    setting: str | None = None,
    statement: str | None = None,
) -> Row:
    """A ``Row`` whose paper, location and statement come from the claims registry.

    Args:
        claim_id: a registered claim id (``precond_lab.claims.claim``).
        verdict: a ``Verdict`` (or its text).
        evidence: the key numbers behind the verdict.
        tolerance: the threshold used to decide.
        kind: what kind of test this row is.
        setting: for a proxy, how the setting differs (default: the registry's).
        statement: what this row tests, if narrower than the registered statement.

    Raises:
        KeyError: ``claim_id`` is not registered.
    """
    c = claims.claim(claim_id)
    if setting is None:
        setting = c.setting if kind == TestKind.PROXY else ""
    return Row(
        claim_id,
        c.paper_label,
        c.location,
        statement or c.statement,
        verdict,
        evidence,
        tolerance,
        kind=kind,
        setting=setting,
    )


def _existing_studies() -> set[str]:
    """Study names present in ``studies/`` (and ``"training"`` if a ``train_*.py`` is)."""
    folder = repo_root() / "studies"
    names = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")}
    if any(n.startswith("train_") for n in names):
        names.add(claims.TRAINING)
    return names


def _untested_row(c: claims.Claim, reason: str) -> Row:
    return Row(
        c.id,
        c.paper_label,
        c.location,
        c.statement,
        UNTESTED_VERDICT,
        reason,
        "",
        kind=c.kind,
        setting=c.setting,
    )


def untested(covered=(), existing: set[str] | None = None) -> list[Row]:
    """\"not yet tested\" rows for every registered claim not in ``covered``.

    The evidence says why: no study in ``studies/`` tests it yet (with what a test needs), or
    its study has no verdict for it in this report.
    """
    existing = _existing_studies() if existing is None else existing
    out = []
    for c in claims.CLAIMS.values():
        if c.id in covered:
            continue
        missing = [s for s in c.studies if s not in existing]
        if len(missing) == len(c.studies):
            who = ", ".join(f"`{s}`" for s in c.studies)
            reason = f"no study tests it yet ({who} to come)" + (f"; {c.needs}" if c.needs else "")
        else:
            reason = "its study gave no verdict in this report (not run, or it failed)"
        out.append(_untested_row(c, reason))
    return out


def repo_root() -> Path:
    """The clone's root (the folder holding ``studies/`` and ``figures/``)."""
    return Path(__file__).resolve().parents[1]


#: Claims that no study in ``studies/`` tests yet (training runs, studies still to come).
UNTESTED = untested()


def cached_capture(cache_dir: Path | None = None, **config):
    """``precond_lab.capture.capture(**config)`` stored once under the cache and reused.

    The store's name is a hash of the configuration (and the store schema version), and a
    capture resumes where it stopped, so studies that need the same run share it. Cache:
    ``<clone>/.precond_lab_cache`` (or ``$PRECOND_LAB_CACHE``).

    Returns:
        The capture opened lazily (``open_capture``).
    """
    import hashlib
    import json

    from .capture import SCHEMA_VERSION, capture, open_capture

    cache = Path(cache_dir or cache_root())
    keyed = {**config, "store_schema_version": SCHEMA_VERSION}  # an older store is not reused
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = (
        cache
        / "captures"
        / f"{config.get('model', 'model')}-{config.get('dataset', 'data')}-{key}.zarr"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    capture(out=str(out), progress=False, **config)
    return open_capture(str(out))


def capture_targets(cap: dict):
    """Yield ``(step, layer, kind, samples, weights)`` from a cached capture.

    ``cap`` holds ``cached_capture``'s arguments; its ``steps``, ``layers`` and
    ``targets`` (``gradients``, ``ggn``, ``ggn-mc``) are walked in order. ``samples`` is a
    float64 ``(N·K, m, n)`` bag (``K`` classes or MC draws per example, 1 for gradients),
    each pseudo-sample with its example's weight ``1/N`` (``precond_lab.schema.sample_bag``).
    """
    from . import schema

    tree = cached_capture(**cap)  # `layers` also restricts what is captured
    for step in cap["steps"]:
        for layer in cap["layers"]:
            node = tree[schema.step_name(step)][layer]
            for kind in cap["targets"]:
                da = schema.layer_samples(node, kind)
                if da is None:
                    raise KeyError(f"step {step} layer {layer}: target {kind!r} not captured")
                arr, w = schema.sample_bag(da, dtype="float64")
                yield step, layer, kind, arr, w


def study_modules(only: list[str] | None = None) -> list:
    """Import the study modules of ``studies/`` (sorted), optionally only some names."""
    folder = repo_root() / "studies"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no studies/ folder next to the package ({folder}); run from a clone of precond_lab"
        )
    if str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))
    names = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))
    modules = [importlib.import_module(f"studies.{n}") for n in names]
    if only:
        known = {m.NAME: m for m in modules}
        unknown = [o for o in only if o not in known]
        if unknown:
            raise ValueError(f"unknown study {unknown}; available: {', '.join(sorted(known))}")
        modules = [known[o] for o in only]
    return modules


def run_preset(module, preset: str, **overrides):
    """Run a study module's preset: ``module.run(module.PRESETS[preset], **overrides)``.

    A study's presets are instances of its frozen ``Config`` dataclass; ``overrides``
    replace fields (``dataclasses.replace``), e.g. ``run_preset(m, "test", seed=1)``.
    """
    if preset not in module.PRESETS:
        raise ValueError(
            f"study {module.NAME} has no preset {preset!r}; available: {', '.join(module.PRESETS)}"
        )
    return module.run(module.PRESETS[preset], **overrides)


def _run_study(mod, preset: str, figdir: Path, datadir: Path, log) -> dict:
    """Run one study's preset; save its Dataset (atomically), figures and verdicts."""
    log(f"[{mod.NAME}] {mod.TITLE} ({preset})")
    t0 = time.perf_counter()
    rec = {"name": mod.NAME, "title": mod.TITLE, "figures": [], "verdicts": [], "error": None}
    try:
        cfg = mod.PRESETS[preset]
        ds = mod.run(cfg) if dataclasses.is_dataclass(cfg) else mod.run(**cfg)
        ds.attrs.update({k: v for k, v in make_attrs().items() if k not in ds.attrs})
        ds.attrs["preset"] = preset
        atomic_write(datadir / f"{mod.NAME}.nc", ds.to_netcdf)
        rec["figures"] = [Path(p) for p in mod.plot(ds, figdir)]
        rec["verdicts"] = list(mod.verdicts(ds))
    except Exception as err:  # one study's failure is reported, not fatal
        rec["error"] = f"{type(err).__name__}: {err}"
        log(traceback.format_exc())
    rec["seconds"] = time.perf_counter() - t0
    for v in rec["verdicts"]:
        log(f"  {v.claim:<6} {v.verdict:<16} {v.evidence}")
    if rec["error"]:
        log(f"  ERROR {rec['error']}")
    return rec


def _open_saved(saved: Path, log):
    """A study's saved Dataset, loaded; None (logged, the file renamed ``*.damaged``) when
    it cannot be read (truncated, empty, not netCDF)."""
    import xarray as xr

    try:
        with xr.open_dataset(saved) as ds:
            return ds.load()
    except Exception as err:  # noqa: BLE001  (any reader error means the file is unusable)
        aside = saved.with_suffix(".nc.damaged")
        os.replace(saved, aside)
        log(
            f"saved data {saved} cannot be read ({type(err).__name__}: {err}); moved to "
            f"{aside.name}"
        )
        return None


def reproduce(
    preset: str = "quick",
    only: list[str] | None = None,
    figdir: Path | None = None,
    report: Path | None = None,
    log=print,
) -> list[dict]:
    """Run the studies, save data and figures, and write the report.

    Every file (``figures/*.png|pdf``, ``figures/data/<study>.nc``, the report) is written
    through a temporary file and a rename, so an interrupted run leaves the previous
    version in place. A study not selected keeps its section from its saved Dataset; a
    saved Dataset that cannot be read is named, moved aside (``*.nc.damaged``) and rebuilt
    by running that study.

    Returns:
        One record per study: ``{"name", "title", "seconds", "figures", "verdicts",
        "error"}``.
    """
    root = repo_root()
    figdir = Path(figdir) if figdir is not None else root / "figures"
    report = Path(report) if report is not None else root / "REPORT.md"
    datadir = figdir / "data"
    datadir.mkdir(parents=True, exist_ok=True)
    records = []
    selected = study_modules(only)
    for mod in selected:
        if preset not in mod.PRESETS:
            raise ValueError(
                f"study {mod.NAME} has no preset {preset!r}; available: {', '.join(mod.PRESETS)}"
            )
        records.append(_run_study(mod, preset, figdir, datadir, log))
    ran = {r["name"] for r in records}
    for mod in study_modules():  # keep the other studies' sections, from their saved data
        saved = datadir / f"{mod.NAME}.nc"
        if mod.NAME in ran or not saved.exists():
            continue
        ds = _open_saved(saved, log)
        if ds is None:  # damaged: named, set aside and rebuilt by running the study
            if preset not in mod.PRESETS:
                raise ValueError(
                    f"study {mod.NAME} has no preset {preset!r} to rebuild {saved} with"
                )
            log(f"[{mod.NAME}] rebuilding its damaged saved data {saved}")
            records.append(_run_study(mod, preset, figdir, datadir, log))
            continue
        rec = {
            "name": mod.NAME,
            "title": f"{mod.TITLE} [from saved data: {ds.attrs.get('preset', '?')} preset, "
            f"{ds.attrs.get('created_utc', ds.attrs.get('date', '?'))}]",
            "figures": [],
            "verdicts": [],
            "error": None,
            "seconds": 0.0,
        }
        try:  # data saved by an older version of the study may not fit its verdicts any more
            rec["figures"] = [Path(p) for p in mod.plot(ds, figdir)]
            rec["verdicts"] = list(mod.verdicts(ds))
        except Exception as err:
            rec["error"] = (
                f"saved data {saved.name} does not fit this version of the study "
                f"({type(err).__name__}: {err}); rerun it (--only {mod.NAME})"
            )
        records.append(rec)
    records.sort(key=lambda r: r["name"])
    write_report(records, report, preset, figdir)
    log(f"wrote {report}")
    return records


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _kind_cell(v: Row, *, planned: bool = False) -> str:
    if v.kind is None:
        return "**error: no test kind**"
    kind = TestKind(v.kind).value
    text = f"planned: {kind}" if planned else kind
    return f"{text} ({v.setting})" if v.setting else text  # every stated difference, any kind


def _claim_cells(v: Row, docs: str) -> tuple[str, str, str]:
    """Claim, paper and location cells, linked to the registry (or flagged if unknown)."""
    c = claims.CLAIMS.get(v.claim)
    if c is None:
        return _cell(v.claim), "**error: not in the claims registry**", _cell(v.location)
    ref = c.reference
    key = ref.key if ref else claims.DERIVED_AFTER.get(c.id)
    paper = (
        f"[{c.paper_label}]({docs}#{claims.paper_anchor(key)})"
        if ref
        else (
            f"derived (after [{claims.PAPERS[key].short}]({docs}#{claims.paper_anchor(key)}))"
            if key
            else claims.DERIVED
        )
    )
    return f"[{v.claim}]({docs}#{claims.anchor(v.claim)})", paper, _cell(c.location)


def write_report(records: list[dict], path: Path, preset: str, figdir: Path) -> None:
    """Write the Markdown report: summary table, per-study sections with figures.

    Every row links its claim and paper to ``docs/claims.md`` (generated from
    ``precond_lab.claims``) and says its test kind; registered claims without a verdict
    are listed as "not yet tested"; a verdict without a kind, or with a claim id the registry
    does not hold, is shown as an error.
    """
    path = Path(path)
    prov = make_attrs()
    docs_dir = repo_root() / "docs"
    docs = _relpath(docs_dir / "claims.md", path.parent)
    bib = _relpath(docs_dir / "references.bib", path.parent)
    lines = [
        "# precond_lab: claims report",
        "",
        f"Generated by `precond-lab reproduce --{preset}` on {prov['created_utc']} "
        f"(precond_lab {prov['library_version']}, jax {prov['jax_version']}, "
        f"device {prov['device']}). Each claim links to its entry in the claims registry "
        f"[{docs}]({docs}) (statement, paper, location, type); references: "
        f"[{bib}]({bib}). Test kinds: paper claim (tested as stated), proxy (a smaller or "
        "different setting, stated), derived (follows from the definitions; not a paper's "
        "claim), not testable here (reason given).",
        "",
        "| claim | paper | location | test kind | verdict | key numbers | tolerance |",
        "|---|---|---|---|---|---|---|",
    ]
    tested = [v for r in records for v in r["verdicts"]]
    rest = untested({v.claim for v in tested})
    for r in records:
        if r["error"]:
            lines.append(f"| {r['name']} | — | — | — | {ERROR} | {_cell(r['error'])} | — |")
    rows = [(v, False) for v in tested] + [(v, True) for v in rest]
    for v, planned in sorted(rows, key=lambda vp: claims.sort_key(vp[0].claim)):
        claim, paper, location = _claim_cells(v, docs)
        lines.append(
            f"| {claim} | {paper} | {location} | {_kind_cell(v, planned=planned)} | "
            f"**{v.verdict}** | {_cell(v.evidence)} | {_cell(v.tolerance)} |"
        )
    counts: dict[str, int] = {}
    for v, _ in rows:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
    kinds: dict[str, int] = {}
    for v in tested:
        k = TestKind(v.kind).value if v.kind is not None else "no kind (error)"
        kinds[k] = kinds.get(k, 0) + 1
    lines += [
        "",
        "Summary: " + ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())),
        "",
        "Tested rows by kind: " + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())),
        "",
    ]
    for r in records:
        lines += [f"## {r['title']} (`{r['name']}`, {r['seconds']:.0f} s)", ""]
        if r["error"]:
            lines += [f"**The study failed:** `{r['error']}`", ""]
        for v in r["verdicts"]:
            lines.append(
                f"- **{v.claim}** ({v.verdict}; {_kind_cell(v)}): {v.statement} — {v.evidence}"
            )
        lines.append("")
        for fig in r["figures"]:
            if fig.suffix == ".png":
                rel = _relpath(fig, path.parent)
                lines += [f"![{fig.stem}]({rel})", ""]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _relpath(p: Path, start: Path) -> str:
    import os

    return os.path.relpath(Path(p).resolve(), Path(start).resolve())
