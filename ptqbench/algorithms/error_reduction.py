"""Closed-form error reduction on Gram statistics: ERQ's Aqer and Wqer, and GPTQ.

Everything here works on a layer's weight as a matrix W [Cout, fan_in] (a conv weight flattened
as `weight.reshape(Cout, -1)`), its bias, and the Gram statistics of its calibration inputs
(`ptqbench.algorithms.streaming.GramStats`). Solves run in float64; quantized weights are produced in
the quantizer's own float32 arithmetic, so they lie exactly on its grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ptqbench.quant.grid import Grid


def _plus_ridge(a: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """a + lam * I in place on `a` (a fresh copy the caller owns): the same numbers as building the
    identity, without two more [n, n] float64 temporaries (ViT-B's fc2: 75 MB each)."""
    a.diagonal().add_(lam)
    return a


def solve_psd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a^-1 b for symmetric positive semi-definite `a`: Cholesky when `a` is definite, else the
    pseudo-inverse (the minimum-norm least-squares answer, e.g. lambda = 0 with dead inputs)."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    return torch.linalg.pinv(a, hermitian=True) @ b


def inverse32_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a^-1 b as ERQ's released code computes it: `torch.inverse` in float32, then a float32
    product (returned as float64 for the caller's arithmetic). Noisier than `solve_psd` where
    `a` is ill-conditioned (the head's Aqer: lambda 0.1 against rank <= N rows)."""
    return (torch.inverse(a.float()) @ b.float()).double()


def ridge_solve_psd(g: torch.Tensor, lam: float, b: torch.Tensor) -> torch.Tensor:
    """(g + lam I)^-1 b in float64 (`solve_psd`), on a copy of the Gram block `g`."""
    return solve_psd(_plus_ridge(g.to(torch.float64, copy=True), lam), b)


def ridge_inverse32(g: torch.Tensor, lam: float, b: torch.Tensor) -> torch.Tensor:
    """(g + lam I)^-1 b as the released code (`inverse32_solve`), with g + lam I built in float32
    directly: the same numbers as rounding the float64 sum (only the diagonal changes, and it is
    added in float64), without an [n, n] float64 copy of g."""
    a = g.to(torch.float32, copy=True)
    a.diagonal().copy_(g.diagonal().double() + lam)
    return inverse32_solve(a, b)


# ERQConfig.solve -> the ridge solver of Aqer and Wqer: (Gram block, lambda, right-hand side)
SOLVERS = {"cholesky64": ridge_solve_psd, "inverse32": ridge_inverse32}


def ridge_correction(G: torch.Tensor, C: torch.Tensor, w_aug: torch.Tensor, lam: float,
                     solve: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor] = ridge_solve_psd) -> torch.Tensor:
    """ERQ's Aqer: the weights [W, b] that best map the quantized input to the float output.

    With A = [Q(X), 1] and the float output Y = [X, 1] [W, b]^T, the ridge regression of the
    residual R = Y - A [W, b]^T on A is beta = (A^T A + lam I)^-1 A^T R = (G + lam I)^-1 (C - G) [W, b]^T,
    where G = A^T A and C = A^T [X, 1]. Returns [W, b] + beta^T (float64).
    """
    w64 = w_aug.double()
    rhs = C.to(torch.float64, copy=True).sub_(G) @ w64.T  # (C - G) [W, b]^T in float64; the difference is freed here
    return w64 + solve(G, lam, rhs).T


def refine_rounding(
    d_floor: torch.Tensor, d_ceil: torch.Tensor, use_ceil: torch.Tensor, P: torch.Tensor, max_steps: int
) -> tuple[torch.Tensor, int]:
    """ERQ's rounding refinement: per row, flip one weight between its floor and ceil code while the
    proxy d^T P d of the row's quantization error d does not increase.

    Each step takes, per row, the entry with the largest |gradient| among those whose error and
    gradient g = 2 P d share a sign, moves it to d_j - g_j, snaps to the nearer of its floor and ceil
    errors, and keeps the change only if the proxy does not increase; a row stops at its first
    rejected (or empty) step, at most `max_steps` steps (the released code's loop, with the
    gradient and proxy updated in O(n) per flip instead of recomputed).

    Args:
        d_floor, d_ceil: [rows, n] errors of the floor and ceil codes (code value - weight).
        use_ceil: [rows, n] bool, the starting choice (round to nearest).
        P: [n, n] proxy matrix, mu mu^T + Sigma of the layer's quantized inputs.
        max_steps: step limit (ERQ: 100).

    Returns:
        the refined choice and the number of accepted flips.
    """
    P = P.double()
    fe, ce = d_floor.double(), d_ceil.double()
    use_ceil = use_ceil.clone()
    d = torch.where(use_ceil, ce, fe)
    g = 2.0 * d @ P
    diag = torch.diagonal(P)
    rows = torch.arange(d.shape[0], device=d.device)
    active = torch.ones(d.shape[0], dtype=torch.bool, device=d.device)
    flips = 0
    for _ in range(max_steps):
        cand = torch.where((d * g > 0) & active[:, None], g.abs(), torch.zeros_like(g))
        best, j = cand.max(dim=1)
        gj, dj, fj, cj = g[rows, j], d[rows, j], fe[rows, j], ce[rows, j]
        v = dj - gj
        to_ceil = (v - cj).abs() <= (v - fj).abs()
        new = torch.where(to_ceil, cj, fj)
        delta = new - dj
        gain = delta * gj + delta * delta * diag[j]  # proxy change of this single flip
        accept = active & (best > 0) & (delta != 0) & (gain <= 0)
        active = accept
        n_accepted = int(accept.sum())
        if n_accepted == 0:
            break
        r, jr = rows[accept], j[accept]
        d[r, jr] = new[accept]
        use_ceil[r, jr] = to_ceil[accept]
        g[r] += 2.0 * delta[accept][:, None] * P[jr]
        flips += n_accepted
    return use_ceil, flips


def proxy_matrix(G: torch.Tensor, rows: int, cols: slice) -> torch.Tensor:
    """mu mu^T + Sigma of the quantized input columns `cols`, from G = [Q(X),1]^T [Q(X),1]
    (Sigma with the n - 1 normalisation, as torch.cov)."""
    mu = G[cols, -1].double() / rows
    sigma = (G[cols, cols].double() - rows * torch.outer(mu, mu)) / max(rows - 1, 1)
    return torch.outer(mu, mu) + sigma


@dataclass
class WqerStats:
    rounds: int = 0
    flips: int = 0


def wqer(
    w_aug: torch.Tensor, G: torch.Tensor, rows: int, grid: Grid, lam: float,
    refine: bool = True, refine_steps: int = 100,
    solve: Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor] = ridge_solve_psd,
) -> tuple[torch.Tensor, WqerStats]:
    """ERQ's Wqer on one layer: quantize the first half (by index) of the still-unquantized
    columns, optionally refine their rounding, and compensate the remaining columns by ridge
    regression, d_R^T = -(G_RR + lam I)^-1 G_RS d_S^T; repeat until only the bias column is left,
    which absorbs the last correction.

    Args:
        w_aug: [Cout, fan_in + 1] weights with the bias as the last column.
        G: [fan_in + 1, fan_in + 1] Gram matrix of [Q(X), 1].
        rows: number of rows summed into G.
        grid: the weight quantizer's per-element grid over the fan_in columns.
        lam: ridge strength.
        solve: the linear solver of the compensation (`SOLVERS`).

    Returns:
        the new [W, b]: W exactly on the grid (float32 values of the quantizer), b float.
    """
    cur = w_aug.double().clone()
    n = cur.shape[1]
    out_w = torch.empty(cur.shape[0], n - 1, dtype=torch.float32, device=cur.device)
    stats = WqerStats()
    done = 0
    while n - done > 1:
        k = (n - done) // 2
        S, R = slice(done, done + k), slice(done + k, n)
        w_s = cur[:, S].float()
        fl, ce = grid.codes(w_s, "floor", S), grid.codes(w_s, "ceil", S)
        use_ceil = grid.codes(w_s, "round", S) == ce
        v_fl, v_ce = grid.dequant(fl, S), grid.dequant(ce, S)
        if refine:
            use_ceil, flips = refine_rounding(v_fl.double() - cur[:, S], v_ce.double() - cur[:, S], use_ceil,
                                              proxy_matrix(G, rows, S), refine_steps)
            stats.flips += flips
        q_s = torch.where(use_ceil, v_ce, v_fl)
        d_s = q_s.double() - cur[:, S]
        delta_r = -solve(G[R, R], lam, G[R, S].double() @ d_s.T)  # blocks of G in float64 as needed, no full copy
        out_w[:, S] = q_s
        cur[:, S] = q_s.double()
        cur[:, R] += delta_r.T
        stats.rounds += 1
        done += k
    return torch.cat([out_w.double(), cur[:, -1:]], dim=1), stats


def gptq(
    w: torch.Tensor, H: torch.Tensor, grid: Grid, blocksize: int = 128, percdamp: float = 0.01,
    act_order: bool = False,
) -> tuple[torch.Tensor, float]:
    """GPTQ (Frantar et al., 2023): quantize columns in order, spreading each column's error over
    the not-yet-quantized columns through the Cholesky factor of H^-1, in blocks of `blocksize`.

    Args:
        w: [Cout, fan_in] float weights.
        H: [fan_in, fan_in] Hessian proxy (E[x x^T] of the layer's quantized inputs; its scale
            does not matter, damping is relative to its mean diagonal).
        grid: per-element grid of the weight quantizer (fixed before the algorithm, as GPTQ's
            static per-row quantizer).
        act_order: process columns by decreasing H diagonal.

    Returns:
        the quantized weights (float32, on the grid) and GPTQ's summed loss sum (w - q)^2 / d^2 / 2.
    """
    W = w.double().clone()
    H = H.to(torch.float64, copy=True)
    scale, zero = grid.scale, grid.zero_point
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = None
    if act_order:
        perm = torch.argsort(torch.diagonal(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
        scale, zero = scale[:, perm], zero[:, perm]
    g = Grid(scale, zero, grid.qmin, grid.qmax)
    damp = percdamp * torch.mean(torch.diagonal(H))
    _plus_ridge(H, damp)
    # H^-1's upper Cholesky factor, each [n, n] float64 step freed as the next is made (ViT-B's fc2:
    # 75 MB each; the nested expression held H and two more beside the result)
    chol = torch.linalg.cholesky(H)
    del H
    h_inv = torch.cholesky_inverse(chol)
    del chol
    Hinv = torch.linalg.cholesky(h_inv, upper=True)
    del h_inv
    Q = torch.zeros(W.shape, dtype=torch.float32, device=W.device)
    loss = torch.zeros((), dtype=torch.float64, device=W.device)  # summed on the device: no sync per column
    cols = W.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = slice(i1 + i, i1 + i + 1)
            wcol = W1[:, i:i + 1]
            q = g.dequant(g.codes(wcol, "round", col), col)
            Q[:, col] = q
            d = Hinv1[i, i]
            err = (wcol - q.double()) / d
            loss += (wcol - q.double()).pow(2).sum() / d**2 / 2
            W1[:, i:] -= err @ Hinv1[i:i + 1, i:]
            Err1[:, i:i + 1] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q, float(loss)
