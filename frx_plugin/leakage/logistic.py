"""Exact logistic heads for final reports: every L2-penalised logistic regression of a pass, fitted at once.

The ridge heads of :mod:`frx_plugin.leakage.ridge` are the every-epoch engine; a study that wants the
logistic answer (the usual practice, ``sklearn.linear_model.LogisticRegression`` per attribute
and fold) gets it here, for all training sets s (the F fold complements and all data) and all
0/1 target columns t (binary attributes; categorical ones one-vs-rest) as one batched
optimisation. Problem (s, t), with λ = 1/C and the intercept b not penalised:

    minimise  Σ_{i ∈ train(s), labelled(t)} [softplus(z_i) − y_i·z_i] + (λ/2)·‖w‖²,   z_i = x_iᵀw + b

— scikit-learn's objective ``C·Σ loss + ½‖w‖²`` divided by C, so the same minimiser.

Solver: L-BFGS, one history per problem, with the initial inverse Hessian H₀⁻¹ taken from the
sufficient statistics: H₀ = ¼·A_s + λ·I′, A_s the training set's augmented Gram matrix
[XᵀX Σx; Σxᵀ n] (Böhning's bound: the logistic Hessian is at most ¼·A_s + λI′; I′ leaves the
intercept unpenalised), applied through its Cholesky factor. In these coordinates the problem
is well conditioned, so a few iterations reach the optimum; each iteration costs one pass over
the rows (X·W for all problems at once, then Xᵀ·G). The start is the least-squares head on the
same statistics scaled by 4 (σ′(0) = ¼), with the intercept at the logit of the class prior.
Backtracking (Armijo) per problem. Convergence per problem: the preconditioned gradient norm
√(gᵀH₀⁻¹g) at most ``tol`` times √n (n its labelled training rows), which bounds the remaining
objective gap per row by about tol²/2 in the H₀ metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from frx_plugin.leakage.statistics import FoldStatistics

__all__ = ["LogisticHeads", "fit_logistic_heads"]


#: Default convergence threshold of the preconditioned gradient norm per √n (see the module docstring).
DEFAULT_TOL = 1e-4
#: Relative rounding of a summed loss in each working precision (Armijo ignores changes below it).
_LOSS_NOISE = {torch.float32: 1e-6, torch.float64: 1e-13}


@dataclass
class LogisticHeads:
    """``weight`` (S, D, T), ``bias`` (S, T) float64; ``iterations`` run; ``converged`` (S, T) bool;
    ``gradient`` (S, T) the final preconditioned gradient norm per √n; ``prior`` (S, T) the share of
    positives among each problem's labelled training rows."""

    weight: torch.Tensor
    bias: torch.Tensor
    prior: torch.Tensor
    iterations: int
    converged: torch.Tensor
    gradient: torch.Tensor


def fit_logistic_heads(
    x: torch.Tensor,
    y: torch.Tensor,
    labelled: torch.Tensor,
    folds: torch.Tensor,
    stats: FoldStatistics,
    *,
    C: float = 1.0,
    tol: float | None = None,
    max_iter: int = 100,
    history: int = 10,
    include_all: bool = True,
) -> LogisticHeads:
    """Logistic heads of every training set and 0/1 column.

    ``x`` (N, D) rows grouped by fold (``folds`` non-decreasing, ids 0..F−1); ``y`` (N, T) 0/1
    targets (0 where unlabelled), ``labelled`` (N, T) bool; ``stats`` the per-fold statistics
    of these rows and columns (:class:`~frx_plugin.leakage.statistics.FoldStatistics`, e.g. from
    :class:`~frx_plugin.leakage.metrics.ProbeStatistics`): they give the preconditioner and the start.
    Training set s < F is every fold but s; with ``include_all``, set F is all rows. The data
    passes run in the rows' precision (float32 unless ``x`` is float64); parameters, sums and
    the solver in float64. Everything runs on the device of ``x`` (the other tensors are moved there).
    """
    tol = DEFAULT_TOL if tol is None else float(tol)
    problem = _LogisticProblem(x, y, labelled, folds, stats, 1.0 / float(C), include_all)
    theta, iterations, converged, norm = _minimise(problem, problem.start(), tol, max_iter, history)
    d = problem.dim
    prior = (problem.n_pos / problem.n_lab.clamp_min(1.0)).clamp(1e-12, 1 - 1e-12)
    return LogisticHeads(theta[:, :d].clone(), theta[:, d].clone(), prior, iterations, converged, norm)


class _LogisticProblem:
    """The S × T penalised logistic problems of one pass: data, training-set sums, preconditioner, objective.

    Parameters ``theta`` (S, D + 1, T): the weights of problem (s, t) in ``theta[s, :D, t]``, its
    intercept in ``theta[s, D, t]``.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor, folds: torch.Tensor, stats: FoldStatistics, lam: float, include_all: bool
    ) -> None:
        f64 = torch.float64
        self.device = device = x.device
        y, labelled, folds = y.to(device), labelled.to(device), folds.to(device)
        stats = FoldStatistics(*(t.to(device) for t in stats.tensors()))
        self.n_folds = stats.count.shape[0]
        self.dim = x.shape[1]
        self.columns = y.shape[1]
        self.sets = self.n_folds + 1 if include_all else self.n_folds
        self.lam = lam
        self.work = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.x = x.to(self.work)
        sizes = torch.bincount(folds.long(), minlength=self.n_folds).tolist()
        self.bounds = [0]
        for size in sizes:
            self.bounds.append(self.bounds[-1] + size)
        self.yw = y.to(self.work)
        self.mask = labelled.to(self.work)
        self.complete = bool(labelled.all())
        # the sets that train on fold f, as index tensors on the device (a list index is copied over on every use)
        self.others = [torch.tensor([s for s in range(self.sets) if s != f], dtype=torch.int64, device=device) for f in range(self.n_folds)]
        self.gram, self.sum_x, self.count, self.cross = (self._train(v) for v in (stats.gram, stats.sum_x, stats.count, stats.cross))
        fold_m = torch.stack([labelled[a:e].sum(0) for a, e in zip(self.bounds[:-1], self.bounds[1:])]).to(f64)  # (F, T)
        self.n_lab, self.n_pos = self._train(fold_m), self._train(stats.sum_y)  # (S, T)
        self.factor = self._preconditioner_factor()

    def _train(self, v: torch.Tensor) -> torch.Tensor:
        """Per-fold sums → training-set sums: fold complements (then all data)."""
        total = v.sum(0, keepdim=True)
        return torch.cat([total - v, total])[: self.sets]

    def _preconditioner_factor(self) -> torch.Tensor:
        """Cholesky factor (S, D+1, D+1) of Böhning's bound ¼·[XᵀX Σx; Σxᵀ n] + λI′ (intercept unpenalised)."""
        d = self.dim
        augmented = torch.zeros(self.sets, d + 1, d + 1, dtype=torch.float64, device=self.device)
        augmented[:, :d, :d] = self.gram
        augmented[:, :d, d] = self.sum_x
        augmented[:, d, :d] = self.sum_x
        augmented[:, d, d] = self.count
        penalty = torch.ones(d + 1, dtype=torch.float64, device=self.device)
        penalty[d] = 0.0
        precondition = 0.25 * augmented + torch.diag(self.lam * penalty)
        precondition[:, d, d] += 1e-9 * self.count.clamp_min(1.0)  # an empty set stays factorisable
        return torch.linalg.cholesky(precondition)

    def apply_inverse(self, g: torch.Tensor) -> torch.Tensor:  # (S, D+1, T)
        """H₀⁻¹·g through the preconditioner's Cholesky factor."""
        return torch.cholesky_solve(g, self.factor)

    def start(self) -> torch.Tensor:
        """The logistic head that linear discriminant analysis implies, as the start ``theta``.

        With equal class covariances, w_logistic = Σ_w⁻¹(μ₁ − μ₀) = w_ls / (p(1−p)(1 − R²)), w_ls
        the least-squares head on the 0/1 target and R² its fit; b = logit p − wᵀ(μ₁ + μ₀)/2.
        """
        f64 = torch.float64
        d, lam, n_pos, n_lab = self.dim, self.lam, self.n_pos, self.n_lab
        n_safe = self.count.clamp_min(1.0)
        mean_x = self.sum_x / n_safe[:, None]
        scatter = self.gram - n_safe[:, None, None] * mean_x[:, :, None] * mean_x[:, None, :]
        cross_c = self.cross - mean_x[:, :, None] * n_pos[:, None, :]
        eye = torch.eye(d, dtype=f64, device=self.device)
        ls_factor, _ = torch.linalg.cholesky_ex(scatter + (lam + 1e-9 * torch.diagonal(scatter, dim1=1, dim2=2).mean(1))[:, None, None] * eye)
        w_ls = torch.cholesky_solve(cross_c, ls_factor)
        p = ((n_pos + 0.5) / (n_lab + 1.0)).clamp(1e-6, 1 - 1e-6)
        yy_c = (n_pos - n_pos**2 / n_lab.clamp_min(1.0)).clamp_min(1e-12)
        r2 = ((cross_c * w_ls).sum(1) / yy_c).clamp(0.0, 0.99)
        w0 = w_ls / (p * (1 - p) * (1 - r2))[:, None, :]
        mean1 = self.cross / n_pos.clamp_min(1.0)[:, None, :]
        mean0 = (self.sum_x[:, :, None] * (n_lab / n_safe[:, None])[:, None, :] - self.cross) / (n_lab - n_pos).clamp_min(1.0)[:, None, :]
        theta = torch.zeros(self.sets, d + 1, self.columns, dtype=f64, device=self.device)
        theta[:, :d] = w0
        theta[:, d] = torch.log(p / (1 - p)) - 0.5 * (w0 * (mean1 + mean0)).sum(1)
        return theta

    def objective(self, theta: torch.Tensor, with_gradient: bool):
        """Summed penalised loss (S, T), its gradient (S, D+1, T) or None, and Σ σ(1 − σ) over the training rows."""
        f64 = torch.float64
        d, t, lam, x, work = self.dim, self.columns, self.lam, self.x, self.work
        loss = 0.5 * lam * (theta[:, :d] ** 2).sum(1)  # (S, T)
        grad = torch.zeros(self.sets, d + 1, t, dtype=f64, device=self.device) if with_gradient else None
        curvature = torch.zeros(self.sets, t, dtype=f64, device=self.device)  # Σ σ(1 − σ) over the training rows
        if grad is not None:
            grad[:, :d] += lam * theta[:, :d]
        for f, (a, e) in enumerate(zip(self.bounds[:-1], self.bounds[1:])):
            if a == e:
                continue
            sets = self.others[f]
            k = sets.numel()
            w = theta[sets, :d].permute(1, 0, 2).reshape(d, k * t).to(work)  # (D, k·T)
            b = theta[sets, d].reshape(1, k * t).to(work)
            z = torch.addmm(b, x[a:e], w).view(e - a, k, t)
            target = self.yw[a:e, None, :]
            rows_loss = torch.nn.functional.softplus(z) - target * z
            if not self.complete:
                rows_loss = rows_loss * self.mask[a:e, None, :]
            loss[sets] += rows_loss.sum(0).to(f64)
            if grad is not None:
                sigma = torch.sigmoid(z)
                weight = sigma * (1.0 - sigma)
                residual = sigma - target
                if not self.complete:
                    residual = residual * self.mask[a:e, None, :]
                    weight = weight * self.mask[a:e, None, :]
                curvature[sets] += weight.sum(0).to(f64)
                grad[sets, :d] += (x[a:e].T @ residual.view(e - a, k * t)).view(d, k, t).permute(1, 0, 2).to(f64)
                grad[sets, d] += residual.sum(0).to(f64)
        return loss, grad, curvature


def _minimise(problem: _LogisticProblem, theta: torch.Tensor, tol: float, max_iter: int, history: int):
    """L-BFGS from ``theta`` until every problem converges or ``max_iter``: (theta, iterations, converged, norm)."""
    f64 = torch.float64
    loss, grad, curvature = problem.objective(theta, True)
    # first step: H₀ = ¼·A overstates the curvature where the rows are already well separated;
    # scale H₀⁻¹ by ¼ / mean σ(1 − σ) at the start (L-BFGS's own sᵀy scaling takes over after)
    gamma_start = (0.25 * problem.n_lab / curvature.clamp_min(1e-12)).clamp(1.0, 1e3)
    memory = _Memory(history)
    scale = problem.n_lab.clamp_min(1.0).sqrt()
    converged = torch.zeros(problem.sets, problem.columns, dtype=torch.bool, device=problem.device)
    norm = torch.zeros(problem.sets, problem.columns, dtype=f64, device=problem.device)
    iterations = 0
    for iterations in range(1, max_iter + 1):
        pg = problem.apply_inverse(grad)
        norm = (grad * pg).sum(1).clamp_min(0.0).sqrt() / scale
        converged = norm <= tol
        if bool(converged.all()):
            iterations -= 1
            break
        direction = -memory.step(grad, problem.apply_inverse, gamma_start)
        direction = torch.where(converged[:, None, :], torch.zeros_like(direction), direction)
        trial, new_loss, new_grad = _line_search(problem, theta, loss, grad, direction, converged)
        memory.add(trial - theta, new_grad - grad)
        theta, loss, grad = trial, new_loss, new_grad
    return theta, iterations, converged, norm


class _Memory:
    """The last ``history`` curvature pairs (s, y, ρ = 1/sᵀy) of L-BFGS, per problem (dot products over dim 1)."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.s: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.rho: list[torch.Tensor] = []

    def step(self, grad: torch.Tensor, apply_inverse, gamma_start: torch.Tensor) -> torch.Tensor:
        """H⁻¹·grad by the two-loop recursion, with H₀⁻¹ the preconditioner scaled per problem."""
        q = grad.clone()
        alphas = []
        for s_k, y_k, rho in zip(reversed(self.s), reversed(self.y), reversed(self.rho)):
            a = rho * (s_k * q).sum(1)
            q -= a[:, None, :] * y_k
            alphas.append(a)
        r = apply_inverse(q)
        if self.s:  # scale H₀⁻¹ by the newest curvature pair, γ = sᵀy / yᵀH₀⁻¹y (≥ 1: H₀ bounds the Hessian)
            y_last = self.y[-1]
            gamma = (self.s[-1] * y_last).sum(1) / (y_last * apply_inverse(y_last)).sum(1).clamp_min(1e-300)
            gamma = torch.where(self.rho[-1] > 0, gamma, torch.ones_like(gamma)).clamp(1.0, 1e3)
        else:
            gamma = gamma_start
        r = r * gamma[:, None, :]
        for (s_k, y_k, rho), a in zip(zip(self.s, self.y, self.rho), reversed(alphas)):
            beta = rho * (y_k * r).sum(1)
            r += (a - beta)[:, None, :] * s_k
        return r

    def add(self, s_k: torch.Tensor, y_k: torch.Tensor) -> None:
        """Keep the pair where sᵀy is clearly positive (else a zero pair), dropping the oldest beyond ``history``."""
        sy = (s_k * y_k).sum(1)
        good = sy > 1e-12 * (s_k * s_k).sum(1).clamp_min(1e-300)
        rho = torch.where(good, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy))
        self.s.append(torch.where(good[:, None, :], s_k, torch.zeros_like(s_k)))
        self.y.append(torch.where(good[:, None, :], y_k, torch.zeros_like(y_k)))
        self.rho.append(rho)
        if len(self.s) > self.history:
            self.s.pop(0), self.y.pop(0), self.rho.pop(0)


def _line_search(
    problem: _LogisticProblem, theta: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor, direction: torch.Tensor, converged: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backtracking (Armijo) per problem from the full step: the new ``theta``, its loss and gradient."""
    slope = (grad * direction).sum(1)  # (S, T), negative
    step = torch.ones(problem.sets, problem.columns, dtype=torch.float64, device=problem.device)
    trial = theta + direction
    new_loss, new_grad, _ = problem.objective(trial, True)  # the full step is almost always taken
    noise = _LOSS_NOISE[problem.work] * loss.abs()  # rounding of the summed loss: below it, no verdict
    ok = (new_loss <= loss + 1e-4 * slope + noise) | converged
    for _ in range(40):
        if bool(ok.all()):
            break
        step = torch.where(ok, step, 0.5 * step)
        trial = theta + step[:, None, :] * direction
        new_loss, _, _ = problem.objective(trial, False)
        ok = (new_loss <= loss + 1e-4 * step * slope + noise) | converged
    else:
        step = torch.where(ok, step, torch.zeros_like(step))  # no decrease found: stay
        trial = theta + step[:, None, :] * direction
    if not bool((step == 1.0).all()):
        new_loss, new_grad, _ = problem.objective(trial, True)
    return trial, new_loss, new_grad
