"""The claims registry: every claim the studies test, its paper, and how it is tested.

One table, one place. Each ``Claim`` names the paper it comes from (a key of
``PAPERS``, or ``"derived"`` for facts that follow from the definitions), where the paper
says it, what kind of statement it is, the planned ``TestKind`` and the study that tests
it. The studies take a verdict's paper, location and statement from here
(``precond_lab.study.claim_verdict``); the report links every row to the generated
``docs/claims.md`` and ``docs/references.bib`` (``python -m precond_lab.claims`` rewrites both;
a test fails when they are stale).

Claim ids: ``P<paper>-<number>`` (numbers are stable across papers, so ``P4-33`` follows
``P2-32``) and ``D<k>`` for the derived identities. A claim tested by training runs names the
study ``"training"`` (any ``studies/train_*.py``).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import Path

__all__ = [
    "TestKind",
    "StatementType",
    "Paper",
    "Claim",
    "PAPERS",
    "CLAIMS",
    "TRAINING",
    "DERIVED",
    "claim",
    "anchor",
    "paper_anchor",
    "sort_key",
    "claims_markdown",
    "bibtex",
    "docs_files",
    "write_docs",
]

TRAINING = "training"  # the study name of every claim tested by training runs (train_*.py)
DERIVED = "derived"  # the paper key of facts that follow from the definitions


class TestKind(str, enum.Enum):
    """What kind of test a verdict row is.

    ``PAPER``: the claim tested as the paper states it. ``PROXY``: a smaller or different
    setting than the paper's (the row's ``setting`` says how it differs). ``DERIVED``: a fact
    that follows from the definitions, not something a paper claims. ``NOT_TESTABLE``: cannot
    be tested here (the evidence says why).
    """

    __test__ = False  # not a pytest class

    PAPER = "paper claim"
    PROXY = "proxy"
    DERIVED = "derived"
    NOT_TESTABLE = "not testable here"


class StatementType(str, enum.Enum):
    """What kind of statement a claim is (what evidence could settle it)."""

    EXACT = "exact identity"
    EMPIRICAL = "empirical (measured on gradients)"
    COMPARISON = "comparison (reported, no verdict forced)"
    TRAINING = "training result"
    SYSTEMS = "systems (speed, precision, memory)"
    INTERPRETATION = "interpretation"


@dataclasses.dataclass(frozen=True)
class Paper:
    """A paper the claims come from.

    Attributes:
        key: its BibTeX key (also its anchor in ``docs/claims.md``).
        label: the short label of its claims (``"P1"``), or ``""`` for background work.
        authors: full author list, ``"Last, First"``.
        title: the title of the version cited.
        year: year of that version.
        venue: where it appeared (conference, or the book for chapters).
        arxiv: the arXiv id, or ``""``.
        version: the version the claims were read in, and title changes.
        code: official code repositories, if any.
    """

    key: str
    label: str
    authors: tuple[str, ...]
    title: str
    year: int
    venue: str
    arxiv: str = ""
    version: str = ""
    code: str = ""

    @property
    def short(self) -> str:
        """``"P1 Lin et al. 2025"``."""
        last = self.authors[0].split(",")[0]
        n = len(self.authors)
        etal = (
            " et al."
            if n > 2 or self.authors[-1] == "others"
            else (f" & {self.authors[1].split(',')[0]}" if n == 2 else "")
        )
        return f"{self.label} {last}{etal} {self.year}".strip()


PAPERS: dict[str, Paper] = {
    p.key: p
    for p in (
        Paper(
            "lin2025klshampoo",
            "P1",
            (
                "Lin, Wu",
                "Lowe, Scott C.",
                "Dangel, Felix",
                "Eschenhagen, Runa",
                "Xu, Zikun",
                "Grosse, Roger B.",
            ),
            "Understanding and Improving Shampoo and SOAP via Kullback–Leibler Minimization",
            2025,
            "International Conference on Learning Representations (ICLR 2026), poster",
            "2509.03378",
            "v7 (v1 of 3 Sep 2025 is titled 'Understanding and Improving the Shampoo Optimizer "
            "via Kullback–Leibler Minimization' and covers KL-Shampoo only; v7 adds KL-SOAP)",
            "https://github.com/yorkerlin/KL-Methods",
        ),
        Paper(
            "lin2024rootfree",
            "P2",
            (
                "Lin, Wu",
                "Dangel, Felix",
                "Eschenhagen, Runa",
                "Bae, Juhan",
                "Turner, Richard E.",
                "Makhzani, Alireza",
            ),
            "Can We Remove the Square-Root in Adaptive Gradient Methods? "
            "A Second-Order Perspective",
            2024,
            "International Conference on Machine Learning (ICML 2024), PMLR 235",
            "2402.03496",
            "v10 (v1 Feb 2024)",
            "https://github.com/yorkerlin/remove-the-square-root, "
            "https://github.com/f-dangel/sirfshampoo",
        ),
        Paper(
            "morwani2024shampoo",
            "P3",
            (
                "Morwani, Depen",
                "Shapira, Itai",
                "Vyas, Nikhil",
                "Malach, Eran",
                "Kakade, Sham",
                "Janson, Lucas",
            ),
            "A New Perspective on Shampoo's Preconditioner",
            2024,
            "International Conference on Learning Representations (ICLR 2025), poster",
            "2406.17748",
            "v1 (26 Jun 2024) and the ICLR 2025 version; no official code",
        ),
        Paper(
            "liu2026bregman",
            "P4",
            (
                "Liu, B.",
                "Zhou, W.",
                "Zhao, C.",
                "Zhang, H.",
                "Kong, B.",
                "Dangel, Felix",
                "Lin, Wu",
            ),
            "How Bregman Divergences Shape Shampoo",
            2026,
            "arXiv preprint",
            "2610.08534",
            "v1 (Oct 2026)",
        ),
        Paper(
            "li2018psgd",
            "P6a",
            ("Li, Xi-Lin",),
            "Preconditioned Stochastic Gradient Descent",
            2018,
            "IEEE Transactions on Neural Networks and Learning Systems 29(5)",
            "1512.04202",
            "v3; the Kronecker whitening update as in the official code (psgd.py, Oct 2025)",
            "https://github.com/lixilinx/psgd_torch",
        ),
        Paper(
            "frans2025splus",
            "P6b",
            ("Frans, Kevin", "Levine, Sergey", "Abbeel, Pieter"),
            "A Stable Whitening Optimizer for Efficient Neural Network Training",
            2025,
            "arXiv preprint",
            "2506.07254",
            "v1 (Jun 2025; title as recalled, unverified here); the code's README titles it "
            "'SPlus: A Stable Whitening Optimizer for Neural Network Optimization'",
            "https://github.com/kvfrans/splus",
        ),
        Paper(
            "vanloan1993kronecker",
            "",
            ("Van Loan, Charles F.", "Pitsianis, Nikos"),
            "Approximation with Kronecker Products",
            1993,
            "Linear Algebra for Large Scale and Real-Time Applications (NATO ASI Series E 232), "
            "Kluwer, pp. 293–314",
        ),
    )
}

_P1, _P2, _P3, _P4 = "lin2025klshampoo", "lin2024rootfree", "morwani2024shampoo", "liu2026bregman"
_P6A, _P6B = "li2018psgd", "frans2025splus"
_E, _M, _C = StatementType.EXACT, StatementType.EMPIRICAL, StatementType.COMPARISON
_T, _S, _I = StatementType.TRAINING, StatementType.SYSTEMS, StatementType.INTERPRETATION
_PA, _PR, _DE, _NT = TestKind.PAPER, TestKind.PROXY, TestKind.DERIVED, TestKind.NOT_TESTABLE
_TRAIN_NEEDS = "needs training runs (a studies/train_*.py study)"


@dataclasses.dataclass(frozen=True)
class Claim:
    """One claim.

    Attributes:
        id: ``"P1-14"``, ``"D5"``, …
        paper: a key of ``PAPERS``, or ``DERIVED``.
        location: where the paper states it (as far as known).
        statement: the claim in one sentence, in the project's own words.
        type: what kind of statement it is.
        kind: the planned kind of test (a verdict row may say otherwise, e.g. not testable
            on this device).
        studies: the studies that test it (``"training"``: the training studies).
        source: how the statement is known: the paper's text, its code, its public reviews,
            a third-party summary, or derived here.
        setting: for a proxy, how our setting differs from the paper's.
        needs: what a test needs, shown while no study tests it.
    """

    id: str
    paper: str
    location: str
    statement: str
    type: StatementType
    kind: TestKind
    studies: tuple[str, ...]
    source: str
    setting: str = ""
    needs: str = ""

    @property
    def reference(self) -> Paper | None:
        """The ``Paper``, or None for a derived fact."""
        return PAPERS.get(self.paper)

    @property
    def paper_label(self) -> str:
        """``"P1 Lin et al. 2025"`` or ``"derived"``."""
        ref = self.reference
        return ref.short if ref else DERIVED


def _c(id, paper, location, statement, type, kind, studies, source, setting="", needs=""):
    studies = (studies,) if isinstance(studies, str) else tuple(studies)
    return Claim(id, paper, location, statement, type, kind, studies, source, setting, needs)


# fmt: off
_SMALL = "small MLP/CNN layers on sklearn digits and binary MNIST"
_CLAIM_LIST = [
    # ---- P3: Morwani et al.
    _c("P3-1", _P3,
       "Abstract; Proposition 1 (numbering from a public OpenReview review of the ICLR 2025 "
       "submission; not checked in the PDF)",
       "Shampoo²'s factors L = E[GGᵀ], R = E[GᵀG] are one power-iteration step, started from "
       "the identity, towards the Frobenius-optimal Kronecker approximation.",
       _E, _PA, "identities", "paper text, reviews"),
    _c("P3-2", _P3, "Abstract; introduction",
       "It is L⊗R, not Shampoo's L^½⊗R^½, that approximates the curvature matrix: its cosine "
       "to H is larger, and for exact Kronecker H the root is only proportional to H^½.",
       _E, _PA, "identities", "paper text"),
    _c("P3-3", _P3, "Abstract; Figure 1 (MNIST-2, CIFAR-5M, ImageNet)",
       "Along training, Shampoo² is close to the optimal Kronecker approximation of both the "
       "Gauss–Newton matrix and the Adagrad matrix.",
       _M, _PR, "p3_quality", "paper text, reviews",
       setting=f"{_SMALL} and a character transformer, not the paper's datasets"),
    _c("P3-4", _P3, "Figure 1 (implied by the abstract)",
       "Unsquared Shampoo L^½⊗R^½ approximates the curvature clearly worse than Shampoo².",
       _M, _PR, "p3_quality", "reviews", setting=_SMALL),
    _c("P3-5", _P3, "Section 3 (number unverified)",
       "Starting the power iteration at (multiples of) the identity is a good choice.",
       _M, _PR, "p3_quality", "reviews", setting=_SMALL),
    _c("P3-6", _P3,
       "not located in the paper: known only from one sentence of a third-party summary (about "
       "ViTs)",
       "The gap between Shampoo² and the optimal Kronecker approximation widens for some "
       "architectures (vision transformers).",
       _M, _PR, "p3_quality",
       "weak: one sentence of a third-party summary, not found in the paper's text",
       setting="a character transformer in place of a ViT"),
    _c("P3-7", _P3, "Abstract; Section 4 (number unverified)",
       "Mini-batch gradient outer products (scaled by B) with sampled labels are unbiased for "
       "the Gauss–Newton matrix, so Shampoo² built from them still approximates it.",
       _M, _PR, "p3_batch_labels", "paper text; unbiasedness derived here", setting=_SMALL),
    _c("P3-8", _P3, "Figure 3 (binary MNIST, CIFAR-5M, ImageNet)",
       "Real labels (empirical Fisher) make Shampoo²'s approximation of the Gauss–Newton "
       "matrix worse than sampled labels in the mini-batch setting.",
       _M, _PR, "p3_batch_labels", "reviews, reproducibility record",
       setting="binary MNIST with a small MLP; not CIFAR-5M or ImageNet"),
    _c("P3-9", DERIVED,
       "follows from P3's definitions (whether P3 states it as a corollary was not checked)",
       "For an exact Kronecker product H, trace-normalised Shampoo² L⊗R/tr H equals H.",
       _E, _DE, "identities", "derived here"),
    _c("P3-43", _P3, "Figure 1 (what it measures, not a stated claim)",
       "For the Gauss–Newton target: how K-FAC, Shampoo² and the optimal Kronecker "
       "approximation compare, and when which is closer.",
       _C, _PR, "p3_quality", "derived here from the figure's content", setting=_SMALL),
    # ---- P1: Lin et al. 2025
    _c("P1-11", _P1, "Claim 1, Sec. 3",
       "Among one-sided Kronecker structures (S_a/d_b)⊗I, the KL-optimal factor is "
       "S_a = E[GGᵀ], Shampoo's left statistic.",
       _E, _PA, "identities", "third-party summary; derived here"),
    _c("P1-12", _P1, "Claim 2, Sec. 3",
       "The two-sided KL-optimal Kronecker factors satisfy the flip-flop fixed point "
       "S_a = E[G S_b⁻¹ Gᵀ]/d_b, S_b = E[Gᵀ S_a⁻¹ G]/d_a.",
       _E, _PA, ("identities", "p1_kl"), "third-party summary; derived here"),
    _c("P1-13", _P1, "Claim 3, Sec. 3",
       "KL-Shampoo's moving-average factor updates are a stochastic proximal-gradient step on "
       "the KL objective (no convergence guarantee is given).",
       _M, _PR, "online_estimators", "third-party summary, reviews",
       setting="online estimators on gradient streams of small layers, not LM training"),
    _c("P1-14", _P1, "Abstract; Sec. 3",
       "Shampoo's one-sided factor estimates do not solve the joint two-sided KL problem; the "
       "mismatch (of scale and of shape) is why Shampoo needs Adam grafting.",
       _M, _PR, "p1_kl", "paper text, third-party summary",
       setting="small MLP/CNN layers on sklearn digits (MNIST in the full preset); the paper "
       "argues it analytically and by LM training"),
    _c("P1-15", _P1,
       "v7 (known from a public OpenReview review of the ICLR 2026 submission; section not "
       "known, PDF not read)",
       "In a fixed eigenbasis Q, SOAP's Adam second moment E[(QᵀG)²] is the KL-optimal "
       "diagonal.",
       _E, _PA, "identities", "reviews; derived here"),
    _c("P1-16", _P1, "Abstract",
       "KL-Shampoo trains stably without Adam grafting.",
       _T, _PR, TRAINING, "paper text", needs=_TRAIN_NEEDS),
    _c("P1-17", _P1,
       "not located in the paper: known only from a third-party summary (translated), which "
       "gives no section",
       "Shampoo with p = ½ and no grafting fails in all 150 random-search runs on NanoRWKV7.",
       _T, _PR, TRAINING, "third-party summary (translated)",
       needs="150-run searches on a 162M-parameter language model"),
    _c("P1-18", _P1, "Abstract (v1, v7)",
       "KL-Shampoo reaches lower loss than SOAP, grafted Shampoo and KL-SOAP in language-model "
       "pre-training (four models, 123M–227M parameters).",
       _T, _PR, TRAINING, "paper text, third-party summary", needs=_TRAIN_NEEDS),
    _c("P1-19", _P1, "Abstract v7; Figure 1",
       "KL-Shampoo with a QR-refreshed eigenbasis and moving-average eigenvalues costs about "
       "as much per step as SOAP while matching the eigh-based preconditioner.",
       _S, _PR, "online_estimators", "paper text, reviews",
       setting="per-step cost and quality on small layers on this machine"),
    _c("P1-20", _P1,
       "the section on eigenvalue estimation, as a third-party summary places it (section "
       "number not known; PDF not read)",
       "The moving-average eigenvalue scheme is crucial: instantaneous eigenvalues in a stale "
       "basis give a worse preconditioner.",
       _M, _PR, "online_estimators", "third-party summary",
       setting="preconditioner quality on gradient streams, not training loss"),
    _c("P1-21", _P1, "Appendix G, Figs. 7–8 (divergence part)",
       "Under KL the KL-optimal Kronecker fit is best and under von Neumann L⊗R/trΣ is best "
       "(each optimum wins its own divergence).",
       _E, _DE, "p1_kl", "reviews, summary; the optimality is derived here"),
    _c("P1-21-train", _P1, "Appendix G, Figs. 7–8 (training part)",
       "In training, KL-Shampoo beats von Neumann Shampoo (trace scaling), and the latter with "
       "the moving-average scheme still beats SOAP.",
       _T, _PR, TRAINING, "reviews, third-party summary", needs=_TRAIN_NEEDS),
    _c("P1-22", _P1,
       "a taxonomy table, as a third-party summary describes it (table number not known; PDF "
       "not read)",
       "The taxonomy: the Frobenius, von Neumann and KL optima are the SVD fit, L⊗R/trΣ and "
       "the flip-flop fit; the eigenbasis diagonal is optimal in its basis; Adafactor is the "
       "von Neumann-optimal diagonal Kronecker fit.",
       _E, _DE, "p1_kl", "third-party summary; derived here"),
    _c("P1-40", _P1,
       "not located in P1: known from P4's background section, which attributes it to P1",
       "The Hessian of the KL (LogDet) divergence at S = Σ is twice the Fisher information of "
       "the Gaussian N(0, S).",
       _E, _PA, "identities", "P4's text; derived here"),
    _c("P1-41", _P1,
       "Abstract; a memory discussion that a third-party summary places in the paper (section "
       "not known)",
       "KL-Shampoo keeps no Adam second moment (m·n numbers per layer fewer), while grafted "
       "Shampoo and SOAP keep one.",
       _S, _PA, "online_estimators", "paper text, third-party summary"),
    # ---- P2: Lin et al. 2024
    _c("P2-24", _P2, "Abstract; Figure 1",
       "Root-free adaptive methods close the generalisation gap to SGD on CNNs (CIFAR-100).",
       _T, _PR, TRAINING, "paper text, official code", needs=_TRAIN_NEEDS),
    _c("P2-25", _P2, "Abstract; Figure 1",
       "Root-free methods keep the performance of root-based ones on vision transformers.",
       _T, _PR, TRAINING, "paper text, official code", needs=_TRAIN_NEEDS),
    _c("P2-26", _P2, "Figure 1 caption (v1)",
       "Root-free methods also work on a 3-layer LSTM and a graph network.",
       _T, _PR, TRAINING, "paper text", needs=_TRAIN_NEEDS),
    _c("P2-27", _P2, "Figure 4 caption; App. Figure 7",
       "The batch-size factor B and the initialisation s₀ = 1 are essential for root-free "
       "methods (without them the hyper-parameters depend on B).",
       _M, _PR, "root_vs_rootfree", "third-party quote of the caption",
       setting="statistics' response to real-label mini-batch gradient streams of a digits MLP "
       "layer, not training runs"),
    _c("P2-28", _P2, "Abstract; Secs. 2–3",
       "Without the root the update is second-order: S⁻¹g follows the Newton-like direction "
       "(damped Gauss–Newton) where the root update S^-½g does not.",
       _M, _PR, "root_vs_rootfree", "paper text",
       setting="two layers of a small digits MLP at one training step; Newton reference = "
       "their exact damped Gauss–Newton"),
    _c("P2-29", _P2, "Abstract v10",
       "Preconditioner invariance lets inverse-free, root-free updates use other curvature "
       "(e.g. K-FAC factors) than the gradient outer product.",
       _M, _PR, "root_vs_rootfree", "paper text",
       setting="fixed point of the update with K-FAC factors; no training"),
    _c("P2-30", _P2, "Abstract; README of the code",
       "IF-Shampoo is numerically stable in bfloat16; Shampoo's root-inverse is not.",
       _S, _PR, "rootfree_precision", "paper text, official code",
       setting="precision harness on synthetic spectra and real Shampoo factors, CPU"),
    _c("P2-31", _P2, "README; time_*.sh scripts",
       "Root-free matrix methods are fast in half precision: a bf16 IF-Shampoo update costs "
       "much less than one float32 eigendecomposition (on GPUs).",
       _S, _PR, "rootfree_precision", "official code",
       setting="single-operation timings, not end-to-end training"),
    _c("P2-32", _P2, "Abstract",
       "Adaptivity itself, not the sign descent the root induces, drives adaptive methods.",
       _I, _PR, TRAINING, "paper text", needs="an interpretation of training results"),
    _c("P2-42", _P2, "preconditioner invariance (exact form derived here)",
       "Exact invariances: rescaling the loss by c leaves the root update unchanged and scales "
       "the root-free one by 1/c; IF-Shampoo's preconditioner is unchanged when C becomes C·O "
       "for an orthogonal O.",
       _E, _DE, "identities", "derived here"),
    # ---- P4: Liu et al. 2026
    _c("P4-33", _P4, "Prop. 1, §3.1",
       "One trace-power Bregman family covers the Frobenius, von Neumann, KL and square-root "
       "fits, with stationarity L = E[G R^(q−1) Gᵀ]/tr R^q, R = E[Gᵀ L^(q−1) G]/tr L^q.",
       _E, _PA, "p4_bregman", "paper text"),
    _c("P4-34", _P4, "Prop. 2, Eqs. 5–7, Fig. 3; §5.1, Fig. 5",
       "q decides which part of the spectrum is fitted: F/VN prefer under-estimation, SQ is "
       "symmetric, KL prefers over-estimation (and real fits show it).",
       _E, _PA, "p4_bregman", "paper text"),
    _c("P4-35", _P4, "Prop. 4, §4.2; Fig. 4",
       "The finite-sample factor error is (m+1)/(N·r_eff(R⋆^q)), so KL ≤ SQ ≤ VN ≤ F.",
       _E, _PA, "p4_bregman", "paper text"),
    _c("P4-36", _P4, "§4.1, Fig. 1, Eq. 8",
       "Empirical second moments under-estimate tail eigenvalues on held-out data, even with "
       "more samples than dimensions.",
       _M, _PR, "p4_bregman", "paper text", setting="small layers instead of GPT-2"),
    _c("P4-37", _P4, "§5.2, Table 2",
       "KL, then SQ, have the lowest held-out gain error (large-sample, 40-sample and EMA fits).",
       _M, _PR, "p4_bregman", "paper text", setting="small layers instead of GPT-2"),
    _c("P4-38", _P4, "§5.3, Table 3",
       "KL, then SQ, recover their own large-sample gains best from short histories.",
       _M, _PR, "p4_bregman", "paper text", setting="small layers instead of GPT-2"),
    _c("P4-39", _P4, "§6, Table 4",
       "SQ- and KL-Shampoo reach lower GPT-2 validation loss than F and VN at every width.",
       _T, _PR, TRAINING, "paper text", needs=_TRAIN_NEEDS),
    _c("P4-44", _P4, "App. D.3",
       "Gains cause the training loss: on a non-Kronecker quadratic, KL-preconditioned "
       "training keeps its final loss when KL's gains are replaced by SQ's (on its leading "
       "or its tail directions), while replacing its leading gains by F's makes the loss "
       "much worse (and its tail gains by F's, worse).",
       _T, _PR, "p4_gains", "brief's summary of the paper's text and numbers (PDF not read "
       "here); the construction of the quadratic and of the swap is ours",
       setting="a 16×24 quadratic of our construction (Kronecker + low-rank + diagonal "
       "Hessian, noise of covariance H/B), fits refitted every step from the last 40 "
       "mini-batch gradients; the paper's exact construction is not known"),
    # ---- issue 21 (PSGD-Kron, SPlus): ids P6-50 to P6-59; P6a = Li 2018, P6b = Frans et al.
    _c("P6-50", DERIVED, "P4 Prop. 1 at q = ½, applied to P6a's whitening criterion",
       "PSGD's whitening criterion tr(PC) + tr(P⁻¹) is half the q = ½ trace-power Bregman "
       "divergence B_½(C, P⁻²) plus a constant, so its Kronecker minimiser is the inverse "
       "square root of the SQ (q = ½) optimum.",
       _E, _DE, "since_p4", "derived here; tests/optim/test_psgd_splus.py checks it"),
    _c("P6-51", _P6A, "official code psgd.py, update_precond_kron_whiten_q0p5eq1p5",
       "Run on a stationary non-Kronecker gradient stream, PSGD-Kron's preconditioner lands "
       "on the q = ½ optimum when its factors follow the criterion's gradient, but on the KL "
       "(q = 0) optimum with the official code's partial-trace whitening update.",
       _M, _PR, "since_p4", "official code; the fixed points derived and measured here",
       setting="4×6 synthetic stream (G = AZB + non-Kronecker noise), online estimator fed "
       "the whole set each step (the study; tests/optim/test_psgd_splus.py also runs 100k "
       "annealed single-sample steps); not a training run"),
    _c("P6-52", _P6B, "Abstract; README of the code (section unverified)",
       "Shampoo with inverse roots cached for many steps is unstable, while SPlus's sign "
       "update in the cached eigenbasis stays bounded (every entry ±1 in the basis).",
       _M, _PR, "since_p4", "paper text, official code",
       setting="one constructed gradient stream: the bound ‖D‖_F ≤ 2√(mn)/(m+n) and "
       "Shampoo's amplification of directions its cached roots never saw; the divergence in "
       "training is not tested (needs training runs)"),
    _c("P6-53", _P6B, "Abstract; README of the code",
       "SPlus matches Adam's performance with 44 % of the gradient steps and 62 % of the "
       "wall-clock time on transformer language, diffusion and image-classification tasks.",
       _T, _PR, TRAINING, "official code's README", needs=_TRAIN_NEEDS),
]
_D = [
    ("Row-major vec: (A⊗B) vec X = vec(A X Bᵀ).", ""),
    ("The rearrangement R(Σ): R(Σ) vec B = vec E[GBGᵀ], R(Σ)ᵀ vec A = vec E[GᵀAG], and "
     "‖Σ − A⊗B‖ = ‖R(Σ) − vec A vec Bᵀ‖.", "vanloan1993kronecker"),
    ("One power step from the identity gives (L, R); power iteration reaches the SVD "
     "optimum; the optimal factors are PSD.", "vanloan1993kronecker"),
    ("For exact Kronecker Σ: L⊗R/trΣ = Σ and L^½⊗R^½ ∝ Σ^½.", ""),
    ("KL flip-flop fixed point; KL-optimal scalar tr(S⁻¹Σ)/d.", ""),
    ("IF-Shampoo's stationary point is the damped KL fixed point, and iterating IF-Shampoo "
     "reaches it.", ""),
    ("The eigenbasis diagonal: diag(QᵀΣQ) = vec E[(Q_aᵀ G Q_b)²].", ""),
    ("vec_r(δaᵀ) = δ⊗a and vec_c(δaᵀ) = a⊗δ.", ""),
    ("The von Neumann optimum over Kronecker products is L⊗R/trΣ.", ""),
]
_CLAIM_LIST += [
    _c(f"D{i}", DERIVED, f"derived identity D{i}" + (" (after Van Loan–Pitsianis)" * bool(key)),
       text, _E, _DE, "identities", "derived here")
    for i, (text, key) in enumerate(_D, start=1)
]

# ==== issue 21: Pro-KLShampoo (P9, arXiv 2605.06316) — paper and claims ============ begin
_P9 = "sun2026proklshampoo"
PAPERS[_P9] = Paper(
    _P9,
    "P9",
    ("Sun, Ruotong", "Wei, Ermin"),
    "Pro-KLShampoo: Projected KL-Shampoo with Whitening Recovered by Orthogonalization",
    2026,
    "arXiv preprint",
    "2605.06316",
    "v1 (7 May 2026); title, authors and abstract from arXiv listings on third-party sites "
    "(arxivlens, tomesphere, emergentmind); the PDF was not read",
)
_P9_SETTING = ("kl_optimal's factors of captured small MLP/CNN layers on digits, not GPT-2 or "
               "LLaMA pre-training")
_CLAIM_LIST += [
    _c("P9-65", _P9,
       "Abstract; Figure 1 (GPT-2, r = 128) as a third-party summary describes it; PDF not read",
       "KL-Shampoo's Kronecker factors have a spike-and-flat spectrum (a few dominant "
       "eigenvalues over an approximately uniform tail) in every layer and throughout "
       "training, exactly so when the gradients follow a rank-ρ signal-plus-isotropic-noise "
       "model.",
       _M, _PR, "since_p4", "abstract (arXiv listing), third-party summary",
       setting=_P9_SETTING),
    _c("P9-66", _P9,
       "Abstract; the restriction's optimality and its AM/GM gap as a third-party summary "
       "describes them (section not known; PDF not read)",
       "Keeping a KL-Shampoo factor as its top-r eigenpairs plus one shared tail eigenvalue "
       "keeps nearly all of the fit's quality; the best shared value is the tail eigenvalues' "
       "mean, and the KL cost is (d − r)·log(AM/GM) of the tail, zero for a flat tail.",
       _M, _PR, "since_p4",
       "abstract (arXiv listing), third-party summary; the tail value and the AM/GM cost "
       "derived here (precond_lab.estimators.flat_tail)",
       setting=_P9_SETTING),
]
# ==== issue 21: Pro-KLShampoo (P9) ================================================= end

# ==== issue 21: Clarifying Shampoo (P5), Purifying Shampoo (P7), DyKAF (P8) ======= begin
_P5, _P7, _P8 = "eschenhagen2026clarifying", "eschenhagen2025purifying", "yudin2025dykaf"
_UNREAD = "; the PDF was not read here: statements from the abstract and third-party summaries"
for _paper in (
    Paper(_P5, "P5", ("Eschenhagen, Runa", "Cai", "Lee, Tsung-Hsien", "Shi, Hao-Jun Michael"),
          "Clarifying Shampoo", 2026, "arXiv preprint", "2602.09314",
          "v1 (Feb 2026; Cai's first name not known here)" + _UNREAD),
    Paper(_P7, "P7",
          ("Eschenhagen, Runa", "Defazio, Aaron", "Lee, Tsung-Hsien", "Turner, Richard E.",
           "Shi, Hao-Jun Michael"),
          "Purifying Shampoo: Investigating Shampoo's Heuristics by Decomposing its "
          "Preconditioner", 2025, "arXiv preprint", "2506.03595", "v1 (Jun 2025)" + _UNREAD),
    Paper(_P8, "P8",
          ("Yudin, Nikolay", "Grishina, Ekaterina", "Veprikov, Andrey", "Beznosikov, Alexandr",
           "Rakhuba, Maxim"),
          "DyKAF: Dynamical Kronecker Approximation of the Fisher Information Matrix for "
          "Gradient Preconditioning", 2025, "arXiv preprint", "2511.06477",
          "v1 (Nov 2025); title and authors from the arXiv HTML page" + _UNREAD),
):
    PAPERS[_paper.key] = _paper
_CLAIM_LIST += [
    _c("P5-45", _P5, "Abstract (section not known; PDF not read)",
       "With one gradient G = USVᵀ, Shampoo's update (GGᵀ)^{-1/4} G (GᵀG)^{-1/4} is the polar "
       "factor UVᵀ: Muon's (spectral descent's) direction.",
       _E, _PA, "since_p4", "abstract, third-party summaries; derived here"),
    _c("P5-46", _P5, "Abstract (section not known; PDF not read)",
       "Instantaneous KL-Shampoo (the damped KL flip-flop fit L⊗R of one gradient) gives a "
       "direction L^{-1/2} G R^{-1/2} that tends to a multiple of the polar factor UVᵀ as the "
       "damping goes to 0.",
       _E, _DE, "since_p4", "abstract, third-party summaries; the limit measured here"),
    _c("P5-47", _P5, "Abstract (section not known; PDF not read)",
       "Along training, Shampoo's updates are semi-orthogonal on average (E[D Dᵀ] close to a "
       "multiple of the identity), which is how it adapts Muon's update.",
       _M, _PR, "since_p4", "abstract, third-party summaries",
       setting="Shampoo's directions along a captured small-model trajectory, not the paper's "
       "runs",
       needs="trajectory captures of Shampoo's directions D_t and a measurement of "
       "E[D_t D_tᵀ] against a multiple of I (not built yet)"),
    _c("P7-55", _P7, "Abstract (section not known; PDF not read)",
       "Adam grafting compensates for Shampoo's stale and mis-scaled eigenvalues; correcting "
       "the eigenvalues in Shampoo's eigenbasis removes the need for grafting.",
       _M, _PR, "since_p4_online", "abstract, third-party summaries; official code "
       "(facebookresearch/optimizers, eigenvalue-corrected Distributed Shampoo)",
       setting="online estimators on captured digits-MLP gradient streams; the grafting "
       "(training) half not yet tested"),
    _c("P8-60", _P8, "Abstract (section not known; PDF not read)",
       "DyKAF's projector-splitting online Kronecker factors approximate the Fisher better than "
       "Shampoo- and SOAP-style factor updates.",
       _M, _PR, "since_p4_online", "abstract, third-party summaries; no official code found, "
       "the KSL step transcribed from the method's description",
       setting="online estimators on captured gradient streams of small layers"),
]
# ==== issue 21: Clarifying Shampoo (P5), Purifying Shampoo (P7), DyKAF (P8) ========= end

# fmt: on

CLAIMS: dict[str, Claim] = {c.id: c for c in _CLAIM_LIST}
#: Papers cited by derived identities (their reference in the docs), by claim id.
DERIVED_AFTER = {f"D{i}": key for i, (_, key) in enumerate(_D, start=1) if key}


def claim(claim_id: str) -> Claim:
    """The registered ``Claim`` ``claim_id``.

    Raises:
        KeyError: the id is not registered (with the known ids).
    """
    try:
        return CLAIMS[claim_id]
    except KeyError:
        raise KeyError(
            f"claim {claim_id!r} is not in the claims registry (precond_lab/claims.py); "
            f"known: {', '.join(CLAIMS)}"
        ) from None


def anchor(claim_id: str) -> str:
    """The claim's anchor in ``docs/claims.md`` (``"P1-21-train"`` → ``"p1-21-train"``)."""
    return claim_id.lower()


def paper_anchor(key: str) -> str:
    """A paper's anchor in ``docs/claims.md``'s reference list."""
    return f"ref-{key}"


def sort_key(claim_id: str):
    """Papers in order P1, P2, P3, P4, then D1–D9; numbers numerically; suffixes after."""
    m = re.fullmatch(r"P(\d+)-(\d+)(.*)", claim_id)
    if m:
        return (0, int(m.group(1)), int(m.group(2)), m.group(3))
    m = re.fullmatch(r"D(\d+)", claim_id)
    if m:
        return (1, 0, int(m.group(1)), "")
    return (2, 0, 0, claim_id)


# ------------------------------------------------------------------------------ docs
def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _authors(p: Paper) -> str:
    names = [" ".join(reversed([s.strip() for s in a.split(",")])) for a in p.authors]
    if names[-1] == "others":  # BibTeX's "and others": the full list not known here
        return ", ".join(names[:-1]) + " et al"
    return ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]


def _reference_text(p: Paper) -> str:
    parts = [f"{_authors(p)}. *{p.title}*. {p.venue}, {p.year}."]
    if p.arxiv:
        parts.append(f"arXiv:{p.arxiv} ({p.version}).")
    elif p.version:
        parts.append(f"{p.version}.")
    if p.code:
        parts.append(f"Code: {p.code}.")
    return " ".join(parts)


def claims_markdown() -> str:
    """The text of ``docs/claims.md``: the claims table, one entry per claim, references."""
    lines = [
        "# Claims registry",
        "",
        "<!-- generated by `python -m precond_lab.claims` from precond_lab/claims.py; "
        "do not edit -->",
        "",
        "Every claim the studies test (or will test), in the project's own words. `REPORT.md` "
        "links each verdict row here. Test kinds: **paper claim** (tested as the paper states "
        "it), **proxy** (a smaller or different setting; the setting says how), **derived** (a "
        "fact that follows from the definitions, not a paper's claim), **not testable here**. "
        "Claims tested by training runs name the study `training`. BibTeX: "
        "[references.bib](references.bib).",
        "",
        "| claim | paper | location | statement | type | test kind | study |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in sorted(CLAIMS.values(), key=lambda c: sort_key(c.id)):
        ref = c.reference
        paper = f"[{ref.short}](#{paper_anchor(ref.key)})" if ref else DERIVED
        lines.append(
            f"| [{c.id}](#{anchor(c.id)}) | {paper} | {_cell(c.location)} | "
            f"{_cell(c.statement)} | {c.type.value} | {c.kind.value} | "
            f"{', '.join(f'`{s}`' for s in c.studies)} |"
        )
    lines += ["", "## Claims", ""]
    for c in sorted(CLAIMS.values(), key=lambda c: sort_key(c.id)):
        ref = c.reference
        after = DERIVED_AFTER.get(c.id)
        if ref:
            cite = f"[{ref.short}](#{paper_anchor(ref.key)}), {c.location}"
        elif after:
            cite = f"derived; see [{PAPERS[after].short}](#{paper_anchor(after)})"
        else:
            cite = f"derived ({c.location})"
        lines += [
            f'<a id="{anchor(c.id)}"></a>',
            f"### {c.id}",
            "",
            f"{c.statement}",
            "",
            f"- Source: {cite}; known from: {c.source}.",
            f"- Type: {c.type.value}; test kind: {c.kind.value}"
            + (f" ({c.setting})" if c.setting else "")
            + f"; study: {', '.join(f'`{s}`' for s in c.studies)}.",
        ]
        if c.needs:
            lines.append(f"- Needs: {c.needs}.")
        lines.append("")
    lines += ["## References", ""]
    for p in PAPERS.values():
        lines += [
            f'<a id="{paper_anchor(p.key)}"></a>',
            f"- **{p.label or p.short}** ({p.key}): {_reference_text(p)}",
            "",
        ]
    return "\n".join(lines)


def bibtex() -> str:
    """The text of ``docs/references.bib``."""
    out = ["% generated by `python -m precond_lab.claims` from precond_lab/claims.py", ""]
    for p in PAPERS.values():
        kind = (
            "incollection"
            if "pp." in p.venue
            else ("inproceedings" if p.venue.startswith("International") else "misc")
        )
        fields = {
            "author": " and ".join(p.authors),
            "title": "{" + p.title + "}",
            ("booktitle" if kind != "misc" else "howpublished"): p.venue,
            "year": str(p.year),
        }
        if p.arxiv:
            fields.update(eprint=p.arxiv, archivePrefix="arXiv", note=f"Version cited: {p.version}")
        elif p.version:
            fields["note"] = p.version
        if p.code:
            fields["url"] = p.code.split(",")[0].strip()
        out.append(f"@{kind}{{{p.key},")
        out += [f"  {k} = {{{v}}}," for k, v in fields.items()]
        out += ["}", ""]
    return "\n".join(out)


def docs_files() -> dict[str, str]:
    """``{path relative to the clone: text}`` of the generated documents."""
    return {
        "docs/claims.md": claims_markdown().rstrip("\n") + "\n",
        "docs/references.bib": bibtex().rstrip("\n") + "\n",
    }


def write_docs(root: Path | str) -> list[Path]:
    """Write ``docs_files`` under ``root``; return the paths."""
    paths = []
    for rel, text in docs_files().items():
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m precond_lab.claims [root]
    import sys

    for written in write_docs(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1]):
        print(f"wrote {written}")
