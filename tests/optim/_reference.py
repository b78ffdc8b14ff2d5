"""Direct NumPy transcriptions (float64) of the optimisers' update rules, written from the
papers' equations and the reference codes, independent of ``precond_lab.optim``'s mode code."""

from __future__ import annotations

import numpy as np


def eig_desc(s):
    _, q = np.linalg.eigh(0.5 * (s + s.T))
    return q[:, ::-1]


def clamp(lam, d, on=True, max_clamp=4000):
    if not on:
        return lam
    cap = max(10.0, min(float(d), float(max_clamp)))
    return np.maximum(lam, 1.0 / cap**2)


def trace_power_shampoo(
    w,
    grads,
    *,
    q=0.0,
    lr,
    b1=0.9,
    beta=0.98,
    eps=1e-8,
    wd=0.01,
    T=10,
    init=0.1,
    clamp_on=True,
    damping=0.0,
):
    """KL-Shampoo (q = 0) / trace-power Shampoo on a matrix; returns W after every step."""
    w = w.copy()
    m, n = w.shape
    out = []
    for k, g in enumerate(grads):
        if k == 0:  # first call: statistics, eigh bases, λ = init; no update
            sa, sb = (1 - beta) / n * g @ g.T, (1 - beta) / m * g.T @ g
            qa, qb = eig_desc(sa), eig_desc(sb)
            la, lb = np.full(m, init), np.full(n, init)
            mom = np.zeros_like(g)
            out.append(w.copy())
            continue
        t = k
        mom = b1 * mom + (1 - b1) * g
        u = qa @ ((qa.T @ mom @ qb) / (np.sqrt(np.outer(la, lb)) + eps)) @ qb.T
        pow_b = qb @ np.diag(lb ** (q - 1)) @ qb.T  # Ŝ_b^{q−1}
        pow_a = qa @ np.diag(la ** (q - 1)) @ qa.T
        stat_a = g @ pow_b @ g.T / np.sum(lb**q)
        stat_b = g.T @ pow_a @ g / np.sum(la**q)
        ta = np.diag(qa.T @ stat_a @ qa) + damping * np.mean(1 / lb)
        tb = np.diag(qb.T @ stat_b @ qb) + damping * np.mean(1 / la)
        sa, sb = beta * sa + (1 - beta) * stat_a, beta * sb + (1 - beta) * stat_b
        la = clamp(beta * la + (1 - beta) * ta, m, clamp_on)
        lb = clamp(beta * lb + (1 - beta) * tb, n, clamp_on)
        if t % T == 0:
            qa, qb = np.linalg.qr(sa @ qa)[0], np.linalg.qr(sb @ qb)[0]
        w = w - lr * u
        w = w - lr * wd * w
        out.append(w.copy())
    return out


def kl_soap(w, grads, *, lr, b1=0.9, b2=0.98, beta=0.98, eps=1e-8, wd=0.01, T=10, init=0.1):
    """KL-SOAP on a matrix: Adam in the KL eigenbasis, no bias correction."""
    w = w.copy()
    m, n = w.shape
    out = []
    for k, g in enumerate(grads):
        if k == 0:
            sa, sb = (1 - beta) / n * g @ g.T, (1 - beta) / m * g.T @ g
            qa, qb = eig_desc(sa), eig_desc(sb)
            la, lb = np.full(m, init), np.full(n, init)
            mu, nu = np.zeros_like(g), np.zeros_like(g)
            out.append(w.copy())
            continue
        gp = qa.T @ g @ qb
        mu = b1 * mu + (1 - b1) * gp
        nu = b2 * nu + (1 - b2) * gp**2
        u = qa @ (mu / (np.sqrt(nu) + eps)) @ qb.T
        sb_inv = qb @ np.diag(1 / lb) @ qb.T
        sa_inv = qa @ np.diag(1 / la) @ qa.T
        ta = np.diag(qa.T @ g @ sb_inv @ g.T @ qa) / n
        tb = np.diag(qb.T @ g.T @ sa_inv @ g @ qb) / m
        sa = beta * sa + (1 - beta) / n * g @ sb_inv @ g.T
        sb = beta * sb + (1 - beta) / m * g.T @ sa_inv @ g
        la, lb = clamp(beta * la + (1 - beta) * ta, m), clamp(beta * lb + (1 - beta) * tb, n)
        if k % T == 0:
            full = qa @ mu @ qb.T
            qa, qb = np.linalg.qr(sa @ qa)[0], np.linalg.qr(sb @ qb)[0]
            mu = qa.T @ full @ qb
        w = w - lr * u
        w = w - lr * wd * w
        out.append(w.copy())
    return out


def soap_on(w, grads, factors, *, lr, b1=0.95, b2=0.95, eps=1e-8, wd=0.01, T=10):
    """Adam in the eigenbases of given factors ``factors[k] = (A_k, B_k)`` (after gradient
    ``k``): the bases from ``factors[0]``, one power step + QR every ``T`` steps."""
    w = w.copy()
    out = []
    for k, g in enumerate(grads):
        if k == 0:
            qa, qb = eig_desc(factors[0][0]), eig_desc(factors[0][1])
            mu, nu = np.zeros_like(g), np.zeros_like(g)
            out.append(w.copy())
            continue
        gp = qa.T @ g @ qb
        mu = b1 * mu + (1 - b1) * gp
        nu = b2 * nu + (1 - b2) * gp**2
        step = lr * np.sqrt(1 - b2**k) / (1 - b1**k)
        u = qa @ (mu / (np.sqrt(nu) + eps)) @ qb.T
        w = w - step * u
        w = w - lr * wd * w
        if k % T == 0:
            full = qa @ mu @ qb.T
            qa, qb = np.linalg.qr(factors[k][0] @ qa)[0], np.linalg.qr(factors[k][1] @ qb)[0]
            mu = qa.T @ full @ qb
        out.append(w.copy())
    return out


def soap(w, grads, *, lr, b1=0.95, b2=0.95, beta=0.95, eps=1e-8, wd=0.01, T=10):
    """SOAP on a matrix (Adam in Shampoo's eigenbasis with bias correction): ``soap_on`` with
    the EMA factors ``S_a ← βS_a + (1−β)GGᵀ`` (from zero)."""
    sa, sb, factors = 0.0, 0.0, []
    for g in grads:
        sa, sb = beta * sa + (1 - beta) * g @ g.T, beta * sb + (1 - beta) * g.T @ g
        factors.append((sa, sb))
    return soap_on(w, grads, factors, lr=lr, b1=b1, b2=b2, eps=eps, wd=wd, T=T)


def _inv_root(s, p, damping):
    e, q = np.linalg.eigh(0.5 * (s + s.T))
    return q @ np.diag((np.maximum(e, 0) + damping) ** (-p)) @ q.T


def shampoo(
    w, grads, *, lr, p=0.5, b1=0.9, b2=0.95, graft=True, eps=1e-8, damping=1e-12, T=10, wd=0.0
):
    """Shampoo ``L^{-p} M̂ R^{-p}`` with optional Adam grafting, roots every T steps."""
    w = w.copy()
    m, n = w.shape
    ll, rr = np.zeros((m, m)), np.zeros((n, n))
    mom, nu = np.zeros((m, n)), np.zeros((m, n))
    out = []
    for k, g in enumerate(grads):
        t = k + 1
        mom = b1 * mom + (1 - b1) * g
        ll, rr = b2 * ll + (1 - b2) * g @ g.T, b2 * rr + (1 - b2) * g.T @ g
        if (t - 1) % T == 0:
            lr_root, rr_root = _inv_root(ll, p, damping), _inv_root(rr, p, damping)
        m_hat = mom / (1 - b1**t)
        d = lr_root @ m_hat @ rr_root
        if graft:
            nu = b2 * nu + (1 - b2) * g**2
            adam = m_hat / (np.sqrt(nu / (1 - b2**t)) + eps)
            d = d * np.linalg.norm(adam) / np.linalg.norm(d)
        w = w - lr * d
        w = w - lr * wd * w
        out.append(w.copy())
    return out


def if_shampoo(
    w,
    grads,
    *,
    lr,
    batch,
    beta2=0.01,
    alpha1=0.9,
    alpha2=0.5,
    lam=1e-3,
    kappa=0.0,
    T=1,
    init_scale=1.0,
    normalize=True,
    c0=None,
    k0=None,
    mc0=None,
    mk0=None,
):
    """IF-Shampoo on a ``d_o×d_i`` matrix (preconditioner ``CCᵀ ⊗ KKᵀ``); also returns the state."""
    w = w.copy()
    d_o, d_i = w.shape
    c = init_scale * np.eye(d_o) if c0 is None else c0.copy()
    kk = init_scale * np.eye(d_i) if k0 is None else k0.copy()
    mc = np.zeros((d_o, d_o)) if mc0 is None else mc0.copy()
    mk = np.zeros((d_i, d_i)) if mk0 is None else mk0.copy()
    mom = np.zeros_like(w)
    out = []
    for step, g in enumerate(grads):
        if step % T == 0:
            tc = (
                c.T @ (batch * g @ kk @ kk.T @ g.T) @ c
                + lam * np.trace(kk.T @ kk) * c.T @ c
                - d_i * np.eye(d_o)
            ) / (2 * d_i)
            tk = (
                kk.T @ (batch * g.T @ c @ c.T @ g) @ kk
                + lam * np.trace(c.T @ c) * kk.T @ kk
                - d_o * np.eye(d_i)
            ) / (2 * d_o)
            mc, mk = alpha2 * mc + (1 - alpha2) * tc, alpha2 * mk + (1 - alpha2) * tk
            sc = beta2 / max(1.0, np.linalg.norm(mc)) if normalize else beta2
            sk = beta2 / max(1.0, np.linalg.norm(mk)) if normalize else beta2
            c, kk = c @ (np.eye(d_o) - sc * mc), kk @ (np.eye(d_i) - sk * mk)
        d = c @ c.T @ g @ kk @ kk.T + kappa * w
        mom = alpha1 * mom + d
        w = w - lr * mom
        out.append(w.copy())
    return out, (c, kk, mc, mk)


def rf_rmsprop(w, grads, *, lr, batch, beta2=0.01, alpha1=0.9, lam=1e-4, kappa=0.0, s0=1.0):
    """RF-RMSProp: ``s ← (1−β₂)s + β₂·B·g²`` from ``s₀``, step ``g/(s+λ)``."""
    w = w.copy()
    s = np.full_like(w, s0)
    mom = np.zeros_like(w)
    out = []
    for g in grads:
        s = (1 - beta2) * s + beta2 * batch * g * g
        mom = alpha1 * mom + g / (s + lam) + kappa * w
        w = w - lr * mom
        out.append(w.copy())
    return out


def kl_shampoo_3d(w, grads, *, lr, b1=0.9, beta=0.98, eps=1e-8, wd=0.01, T=10, init=0.1):
    """KL-Shampoo's tensor rule on a 3-D tensor with dense Kronecker products (row-major vec)."""
    w = w.copy()
    dims = w.shape

    def unfold(x, j):
        return np.moveaxis(x, j, 0).reshape(dims[j], -1)

    def kron_others(mats, j):
        out = np.ones((1, 1))
        for i, a in enumerate(mats):
            if i != j:
                out = np.kron(out, a)
        return out

    out = []
    for k, g in enumerate(grads):
        if k == 0:
            total = g.size
            fs = [(1 - beta) * dims[j] / total * unfold(g, j) @ unfold(g, j).T for j in range(3)]
            qs = [eig_desc(f) for f in fs]
            ls = [np.full(d, init) for d in dims]
            mom = np.zeros_like(g)
            out.append(w.copy())
            continue
        mom = b1 * mom + (1 - b1) * g
        qfull = np.kron(np.kron(qs[0], qs[1]), qs[2])
        lam = np.kron(np.kron(ls[0], ls[1]), ls[2])
        u = (qfull @ ((qfull.T @ mom.ravel()) / (np.sqrt(lam) + eps))).reshape(dims)
        invs = [q @ np.diag(1 / lv) @ q.T for q, lv in zip(qs, ls, strict=True)]
        new_f, new_l = [], []
        for j in range(3):
            d_other = g.size // dims[j]
            stat = unfold(g, j) @ kron_others(invs, j) @ unfold(g, j).T / d_other
            new_f.append(beta * fs[j] + (1 - beta) * stat)
            new_l.append(
                clamp(beta * ls[j] + (1 - beta) * np.diag(qs[j].T @ stat @ qs[j]), dims[j])
            )
        fs, ls = new_f, new_l
        if k % T == 0:
            qs = [np.linalg.qr(f @ q)[0] for f, q in zip(fs, qs, strict=True)]
        w = w - lr * u
        w = w - lr * wd * w
        out.append(w.copy())
    return out


def adamw(w, grads, *, lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, wd=1e-4):
    """AdamW as optax composes it: Adam's bias-corrected step, ``+ wd·W``, ``× −η``."""
    w = np.array(w, dtype=np.float64)
    m, v, out = np.zeros_like(w), np.zeros_like(w), []
    for t, g in enumerate(grads, start=1):
        m = (1 - b1) * g + b1 * m
        v = (1 - b2) * g * g + b2 * v
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t) + eps_root) + eps)
        w = w - lr * (u + wd * w)
        out.append(w.copy())
    return out


def newton_schulz(x, coeffs=(3.4445, -4.7750, 2.0315), steps=5, eps=1e-8):
    """Muon's quintic: ``X₀ = N/(‖N‖_F + ε)`` (wide side first), ``X ← aX + (bA + cA²)X``."""
    a, b, c = coeffs
    wide = x.T if x.shape[0] > x.shape[1] else x
    y = wide / (np.linalg.norm(wide) + eps)
    for _ in range(steps):
        gram = y @ y.T
        y = a * y + (b * gram + c * gram @ gram) @ y
    return y.T if x.shape[0] > x.shape[1] else y


def muon(w, grads, *, lr, beta=0.95, nesterov=True, steps=5, eps=1e-8, wd=0.0, rms=None):
    """Muon: ``M ← βM + (1−β)G``; orthogonalise the Nesterov look-ahead
    ``β M/(1−β^{t+1}) + (1−β) G/(1−β^t)`` (or ``M/(1−β^t)``); scale ``√max(1, n/m)``
    (or ``√max(m, n)·rms``); ``W ← W − ηD``, then ``W ← W − η·wd·W`` (decay after the step)."""
    w = np.array(w, dtype=np.float64)
    m, n = w.shape
    mom, out = np.zeros_like(w), []
    scale = np.sqrt(max(1.0, n / m)) if rms is None else np.sqrt(max(m, n)) * rms
    for t, g in enumerate(grads, start=1):
        mom = beta * mom + (1 - beta) * g
        if nesterov:
            x = beta * mom / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta**t)
        else:
            x = mom / (1 - beta**t)
        w = w - lr * scale * newton_schulz(x, steps=steps, eps=eps)
        w = w - lr * wd * w
        out.append(w.copy())
    return out


def _procrustes(q, max_step=0.125):
    """psgd_torch's ``procrustes_step2`` with the exact spectral norm of ``R = Qᵀ − Q``."""
    r = q.T - q
    r = r / (np.linalg.norm(r, 2) + np.finfo(q.dtype).smallest_normal)
    rq = r @ q
    rrq = r @ rq
    a = min(-np.trace(rq) / np.trace(rrq), max_step) if np.trace(rrq) < 0 else max_step
    return q + a * (rq + 0.5 * a * rrq)


def psgd_kron(
    w,
    grads,
    *,
    lr,
    lr_p=0.1,
    beta_l=0.9,
    damping=1e-9,
    momentum=0.0,
    init_scale=None,
    clip=(2.0, 10.0),
    whitening="partial",
):
    """PSGD-Kron on a matrix (``P = P_a ⊗ P_b``, ``P_j = Q_jᵀQ_j``): ``psgd_torch``'s
    ``KronWhiten`` with ``dQ = Q^{0.5}EQ^{1.5}``, the damping noise integrated out."""
    w = np.array(w, dtype=np.float64)
    m, n = w.shape
    mom, out = np.zeros_like(w), []
    ells = [0.0, 0.0]
    for t, g in enumerate(grads):
        if t == 0:
            s = init_scale if init_scale is not None else (np.mean(g**4) + damping**4) ** -0.125
            qa, qb = np.sqrt(s) * np.eye(m), np.sqrt(s) * np.eye(n)
        if momentum > 0:
            beta = min(t / (1 + t), momentum)
            mom = beta * mom + (1 - beta) * g
        pa, pb = qa.T @ qa, qb.T @ qb
        if whitening == "partial":
            pg = pa @ g @ pb
            terms = [
                (pg @ pg.T + damping**2 * np.sum(pb * pb) * pa @ pa, n),
                (pg.T @ pg + damping**2 * np.sum(pa * pa) * pb @ pb, m),
            ]
        else:  # the criterion's natural gradient: P_a E[G P_b Gᵀ] P_a − tr(P_b⁻¹) I
            left, right = pa @ g @ qb.T, qa @ g @ pb
            terms = [
                (left @ left.T + damping**2 * np.trace(pb) * pa @ pa, np.trace(np.linalg.inv(pb))),
                (
                    right.T @ right + damping**2 * np.trace(pa) * pb @ pb,
                    np.trace(np.linalg.inv(pa)),
                ),
            ]
        new = []
        for j, (q, (a, c)) in enumerate(zip((qa, qb), terms, strict=True)):
            ell = np.linalg.eigvalsh(a).max() + c
            ells[j] = max(beta_l * ells[j] + (1 - beta_l) * ell, ell)
            new.append(_procrustes(q - lr_p / ells[j] * (a @ q - c * q)))
        qa, qb = new
        d = (qa.T @ qa) @ (mom if momentum > 0 else g) @ (qb.T @ qb)
        if clip is not None:
            rms = np.sqrt(np.mean(d * d))
            d = d * (clip[0] / rms if rms > clip[0] else 1.0)
            d = np.clip(d, -clip[1], clip[1])
        w = w - lr * d
        out.append(w.copy())
    return out


def splus(w, grads, *, lr, b1=0.9, b2=0.999, eps=1e-30, every=100, wd=1e-2, constant=None):
    """SPlus on a matrix: ``Q_a sign(Q_aᵀMQ_b) Q_bᵀ`` in the cached bases (refreshed by
    ``eigh`` at step 1 and every ``every`` steps, after the update), ``+ wd·W``, times
    ``2/(m + n)`` (or ``constant``) and ``η``."""
    w = np.array(w, dtype=np.float64)
    m, n = w.shape
    scale = 2 / (m + n) if constant is None else constant
    mom, sa, sb = np.zeros_like(w), np.zeros((m, m)), np.zeros((n, n))
    qa, qb, out = np.eye(m), np.eye(n), []
    for t, g in enumerate(grads, start=1):
        mom = b1 * mom + (1 - b1) * g
        u = qa @ np.sign(qa.T @ mom @ qb) @ qb.T
        sa, sb = b2 * sa + (1 - b2) * g @ g.T, b2 * sb + (1 - b2) * g.T @ g
        if t == 1 or t % every == 0:
            qa = np.linalg.eigh(sa + eps * np.eye(m))[1]
            qb = np.linalg.eigh(sb + eps * np.eye(n))[1]
        w = w - lr * scale * (u + wd * w)
        out.append(w.copy())
    return out


def _offdiag_ratio(b):
    norm = np.linalg.norm(b)
    off = np.sqrt(max(norm**2 - np.sum(np.diag(b) ** 2), 0.0))
    return off / norm if norm > 0 else 0.0


def purifying_refresh(s, q, *, eps, tol, solver, iterations):
    """Distributed Shampoo's ``matrix_eigendecomposition`` with a warm start ``q``: the
    QR algorithm (``qr_algorithm``: iterate while the off-diagonal criterion fails, then
    sort by the estimated eigenvalues) or ``eigh`` skipped when the criterion holds."""
    a = s + eps * np.eye(len(s))
    b = q.T @ a @ q
    if solver == "eigh":
        if tol > 0 and _offdiag_ratio(b) <= tol:
            return q
        return np.linalg.eigh(a)[1]
    it = 0
    while it < iterations and not _offdiag_ratio(b) <= tol:
        qq, r = np.linalg.qr(b)
        b = r @ qq
        q = q @ qq
        it += 1
    return q[:, np.argsort(np.diag(b), kind="stable")]


def purifying_shampoo(
    w, grads, *, lr, b1=0.9, b2=0.999, eps=1e-12, every=10, tol=0.01, solver="qr", iters=1
):
    """Purifying Shampoo on a matrix (eigenvalue-corrected Shampoo, Distributed Shampoo's
    ``step``): factors, bias correction, the criterion-gated refresh every ``every`` steps,
    corrected eigenvalues in the new basis, bias-corrected momentum, the direction."""
    w = np.array(w, dtype=np.float64)
    m, n = w.shape
    sa, sb, qa, qb = np.zeros((m, m)), np.zeros((n, n)), np.eye(m), np.eye(n)
    v, mom, out = np.zeros_like(w), np.zeros_like(w), []
    for t, g in enumerate(grads, start=1):
        sa, sb = b2 * sa + (1 - b2) * g @ g.T, b2 * sb + (1 - b2) * g.T @ g
        c2 = 1 - b2**t
        if t % every == 0:
            kw = dict(eps=eps, tol=tol, solver=solver, iterations=iters)
            qa, qb = purifying_refresh(sa / c2, qa, **kw), purifying_refresh(sb / c2, qb, **kw)
        v = b2 * v + (1 - b2) * (qa.T @ g @ qb) ** 2
        mom = b1 * mom + (1 - b1) * g
        m_hat = mom / (1 - b1**t)
        d = qa @ ((qa.T @ m_hat @ qb) / (np.sqrt(v / c2) + eps)) @ qb.T
        w = w - lr * d
        out.append(w.copy())
    return out


def ksl_kronecker(u, v, s, g, beta):
    """One KSL projector-splitting step of the rank-1 approximation ``(vec U) s (vec V)ᵀ`` of
    the rearranged second moment, written on the dense ``mn × mn`` matrices: ``Y₀ = s U ⊗ V``,
    ``ΔF = (1−β)(E[ggᵀ] − Y₀)`` (``g`` one gradient or a per-example batch) rearranged
    (``𝓡(L⊗R) = vec L vec Rᵀ``, row-major ``vec``);
    ``K = U s + 𝓡(ΔF) vec V``, ``U' = K/‖K‖``, ``s̃ = U'ᵀ𝓡(Y₀)vec V``,
    ``L = V s̃ + 𝓡(ΔF)ᵀU'``, ``s' = ‖L‖``, ``V' = L/s'``."""
    g = np.asarray(g)
    gb = g[None] if g.ndim == 2 else g  # a per-example batch: its mean outer product
    m, n = gb.shape[1:]
    vecs = gb.reshape(len(gb), -1)
    delta = (1 - beta) * (vecs.T @ vecs / len(gb) - s * np.kron(u, v))
    # 𝓡: entry ((i,j),(a,b)) = F[(i,a),(j,b)]
    rd = delta.reshape(m, n, m, n).transpose(0, 2, 1, 3).reshape(m * m, n * n)
    uv, vv = u.reshape(-1), v.reshape(-1)
    k = uv * s + rd @ vv
    u1 = k / np.linalg.norm(k)
    s_tilde = s * (u1 @ uv)  # U'ᵀ (vec U) s (vec V)ᵀ vec V, ‖vec V‖ = 1
    lv = vv * s_tilde + rd.T @ u1
    s1 = np.linalg.norm(lv)
    return u1.reshape(m, m), (lv / s1).reshape(n, n), s1


def dykaf_factors(grads, *, beta=0.95):
    """DyKAF's ``(U, V, s)`` after each gradient, from ``U = I/√m, V = I/√n, s = 0``."""
    m, n = np.shape(grads[0])[-2:]
    u, v, s, out = np.eye(m) / np.sqrt(m), np.eye(n) / np.sqrt(n), 0.0, []
    for g in grads:
        u, v, s = ksl_kronecker(u, v, s, g, beta)
        out.append((u, v, s))
    return out


def dykaf(w, grads, *, lr, b1=0.95, b2=0.95, beta=0.95, eps=1e-8, wd=0.01, T=10):
    """DyKAF on a matrix: ``soap_on`` with the KSL factors (``dykaf_factors``)."""
    factors = [(u, v) for u, v, _ in dykaf_factors(grads, beta=beta)]
    return soap_on(w, grads, factors, lr=lr, b1=b1, b2=b2, eps=eps, wd=wd, T=T)
