"""Exact REML for the random-intercept linear model, from sufficient statistics.

Model (pupil ``i`` in school ``j``)::

    y_ij = x_ij' beta + u_j + e_ij,   u_j ~ N(0, sigma2_school),  e_ij ~ N(0, sigma2_pupil)

Everything the restricted (residual) likelihood needs is a handful of sums, so a
national data set (hundreds of thousands of pupils, tens of thousands of schools)
is reduced once - by Spark or by :meth:`SufficientStatistics.from_arrays` - and the
fit itself is a one-dimensional optimisation that takes milliseconds:

* per group ``j``: ``n_j``, ``s_j = sum_i x_ij`` (a p-vector) and ``t_j = sum_i y_ij``;
* globally: ``X'X`` (p x p), ``X'y`` (p), ``y'y`` and ``N``.

Write ``gamma = sigma2_school / sigma2_pupil`` and ``V = sigma2_pupil * H`` with
``H_j = I + gamma 11'``.  Then ``H_j^{-1} = I - c_j 11'`` with
``c_j = gamma / (1 + n_j gamma)`` and ``log|H| = sum_j log(1 + n_j gamma)``, so::

    A(gamma) = X'H^{-1}X = X'X - sum_j c_j s_j s_j'
    b(gamma) = X'H^{-1}y = X'y - sum_j c_j s_j t_j
    q(gamma) = y'H^{-1}y = y'y - sum_j c_j t_j^2
    beta(gamma) = A^{-1} b,     r(gamma) = q - b' beta  (= (y - X beta)' H^{-1} (y - X beta))

``sigma2_pupil`` is profiled out (``sigma2_pupil = r / (N - p)``), leaving the
REML criterion (-2 x restricted log-likelihood, on the same scale as lme4's
``REMLcrit()`` and equal to ``-2 * llf`` of a statsmodels ``MixedLM`` REML fit)::

    REMLcrit(gamma) = (N - p) * (1 + log(2 pi r(gamma) / (N - p)))
                      + sum_j log(1 + n_j gamma) + log det A(gamma)

which is minimised over ``log gamma``: a coarse grid (guarding against a second
local minimum), then bounded Brent (:func:`scipy.optimize.minimize_scalar`),
then a polish of the root of the analytic derivative; the boundary
``gamma = 0`` (no school variance; the fit is then OLS) is always evaluated too
and wins if it is at least as good.  Groups of equal size share ``c_j``, so the
sums over groups are pre-aggregated by group size and one evaluation costs
``O(K p^2)`` for ``K`` distinct group sizes, independent of the number of pupils.

Numerics: float64 throughout; internally the non-intercept columns of ``X`` and
the response are centred and scaled to unit variance (a congruence transform of
the sufficient statistics, so the linear algebra is not ill-conditioned by
``prior_aps ~ 100`` next to its square ``~ 10,000``; the sums themselves must be
accumulated in float64 by whoever gathers them), linear systems are solved by
Cholesky, and everything is reported on the original scale.

Before fitting, the design is checked from ``X'X`` alone: all-zero columns,
constant columns (collinear with the intercept), then an in-order Gram-Schmidt
(sequential Cholesky) of the centred, correlation-scaled cross-product; a column
whose residual R^2-complement is at most ``collinearity_tol`` is reported with
the minimal set of earlier terms it is an exact combination of
(:class:`SingularDesignError`).

This module is pure numpy/scipy/pandas and must never import pyspark: the Spark
gatherer fills :class:`SufficientStatistics` field by field.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import linalg, optimize
from scipy.stats import norm

__all__ = [
    "DEFAULT_MIN_GROUPS",
    "DEFAULT_COLLINEARITY_TOL",
    "RemlError",
    "SingularDesignError",
    "TooFewGroupsError",
    "DegenerateDataError",
    "SufficientStatistics",
    "RemlResult",
    "fit_reml",
    "reml_criterion",
]

logger = logging.getLogger(__name__)

#: Default minimum number of groups (schools).  Two is the mathematical minimum
#: for the school variance to be identifiable at all; with fewer than about five
#: levels a variance component is estimated so poorly that treating the factor
#: as random is not defensible (a common rule of thumb in the mixed-model
#: literature), so the engine refuses below five unless the caller lowers it.
DEFAULT_MIN_GROUPS = 5

#: A column whose squared correlation-scale residual, after regressing it on the
#: intercept and on the earlier (non-dropped) columns, is at most this is taken as
#: an exact linear combination of them (i.e. R^2 >= 1 - tol).
DEFAULT_COLLINEARITY_TOL = 1e-10

#: Default search range for gamma = sigma2_school / sigma2_pupil (a grid on
#: log10 gamma in steps of ``_GRID_STEP_LOG10``; the upper end is extended if the
#: criterion is still falling there).  gamma = 0 is always checked separately.
DEFAULT_GAMMA_BOUNDS = (1e-8, 1e6)
_GRID_STEP_LOG10 = 0.5
_GAMMA_HARD_MAX = 1e12

#: Two criterion values closer than this (absolute, on the -2 log-likelihood
#: scale; or than the criterion's rounding noise, if larger) are treated as equal
#: when deciding for the gamma = 0 boundary.
_BOUNDARY_CRITERION_TOL = 1e-8

#: Per-group-size aggregation keeps K x p x p doubles; above this many elements
#: (or when it would not save work) the per-group sums are used directly.
_MAX_STACK_ELEMENTS = 16_000_000

_Z_95 = 1.959963984540054
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- errors


class RemlError(ValueError):
    """Base class for REML input/data errors (all are ``ValueError``)."""


class SingularDesignError(RemlError):
    """The fixed-effects design is rank deficient.

    ``terms`` names every offending term (in design order); ``dependencies`` has
    one tuple per problem: ``(term,)`` for an all-zero column, otherwise the
    dropped term followed by the terms it is an exact linear combination of
    (``"intercept"`` included when the constant is involved).
    """

    def __init__(self, message: str, terms: tuple[str, ...], dependencies: tuple[tuple[str, ...], ...]):
        super().__init__(message)
        self.terms = terms
        self.dependencies = dependencies


class TooFewGroupsError(RemlError):
    """Fewer groups (schools) than the configured minimum."""

    def __init__(self, message: str, n_groups: int, min_groups: int):
        super().__init__(message)
        self.n_groups = n_groups
        self.min_groups = min_groups


class DegenerateDataError(RemlError):
    """The data cannot identify the model (e.g. constant response, no school with
    two or more pupils, no residual degrees of freedom, perfect fit)."""


# --------------------------------------------------------------- sufficient statistics


def _frozen_array(a, dtype=np.float64, ndim: int | None = None, name: str = "") -> np.ndarray:
    arr = np.array(a, dtype=dtype, copy=True)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class SufficientStatistics:
    """The sums a random-intercept REML fit needs; nothing per pupil.

    Fields (p = ``len(term_names)``, G = number of groups):

    term_names
        Names of the design columns, ``"intercept"`` first (that column is all ones).
    n_total
        N, the number of pupils (rows).
    xtx
        ``X'X``, p x p.
    xty
        ``X'y``, p.
    yty
        ``y'y``, a scalar.
    group_ids
        G distinct group (school) identifiers, any dtype; order is free but must
        match the rows of the three arrays below.
    group_n
        G pupil counts ``n_j`` (integers >= 1).
    group_sum_x
        G x p, row ``j`` is ``s_j = sum_i x_ij`` (so column 0 equals ``group_n``).
    group_sum_y
        G, ``t_j = sum_i y_ij``.

    Construction validates shapes, finiteness and the internal consistency of the
    sums (``sum_j s_j == X'X[0]``, ``sum_j t_j == X'y[0]``, ``sum_j n_j == N``) and
    stores read-only float64 copies (``group_n`` as int64).
    """

    term_names: tuple[str, ...]
    n_total: int
    xtx: np.ndarray
    xty: np.ndarray
    yty: float
    group_ids: np.ndarray
    group_n: np.ndarray
    group_sum_x: np.ndarray
    group_sum_y: np.ndarray

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        names = tuple(str(t) for t in self.term_names)
        if not names or names[0] != "intercept":
            raise ValueError(f"term_names must start with 'intercept', got {names[:3]!r}")
        if len(set(names)) != len(names):
            dup = sorted({t for t in names if names.count(t) > 1})
            raise ValueError(f"duplicate term names: {dup}")
        set_(self, "term_names", names)
        p = len(names)

        n_total = int(self.n_total)
        if n_total != self.n_total or n_total < 1:
            raise ValueError(f"n_total must be a positive integer, got {self.n_total!r}")
        set_(self, "n_total", n_total)

        xtx = _frozen_array(self.xtx, ndim=2, name="xtx")
        xty = _frozen_array(self.xty, ndim=1, name="xty")
        yty = float(self.yty)
        group_ids = np.array(self.group_ids, copy=True)
        if group_ids.ndim != 1:
            raise ValueError(f"group_ids must be 1-dimensional, got shape {group_ids.shape}")
        group_ids.flags.writeable = False
        gn = np.asarray(self.group_n)
        if gn.ndim != 1 or (gn.size and not np.all(np.isfinite(gn.astype(np.float64)))):
            raise ValueError("group_n must be a 1-dimensional array of counts")
        group_n = _frozen_array(gn, dtype=np.int64, ndim=1, name="group_n")
        if not np.array_equal(group_n, gn):
            raise ValueError("group_n must hold whole numbers")
        gsx = _frozen_array(self.group_sum_x, ndim=2, name="group_sum_x")
        gsy = _frozen_array(self.group_sum_y, ndim=1, name="group_sum_y")

        G = group_ids.shape[0]
        if xtx.shape != (p, p):
            raise ValueError(f"xtx has shape {xtx.shape}, expected {(p, p)}")
        if xty.shape != (p,):
            raise ValueError(f"xty has shape {xty.shape}, expected {(p,)}")
        if group_n.shape != (G,) or gsy.shape != (G,) or gsx.shape != (G, p):
            raise ValueError(
                f"group arrays disagree: {G} group_ids, group_n {group_n.shape}, "
                f"group_sum_x {gsx.shape} (expected {(G, p)}), group_sum_y {gsy.shape}"
            )
        for nm, arr in (("xtx", xtx), ("xty", xty), ("group_sum_x", gsx), ("group_sum_y", gsy)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{nm} contains non-finite values")
        if not math.isfinite(yty) or yty < 0:
            raise ValueError(f"yty must be finite and >= 0, got {yty}")
        if G == 0:
            raise ValueError("no groups")
        if np.any(group_n < 1):
            raise ValueError("every group must have at least one pupil (group_n >= 1)")
        if int(group_n.sum()) != n_total:
            raise ValueError(f"sum(group_n) = {int(group_n.sum())} but n_total = {n_total}")
        if pd.Index(group_ids).has_duplicates:
            raise ValueError("group_ids are not unique")

        scale = float(np.max(np.abs(xtx))) if xtx.size else 0.0
        if not np.allclose(xtx, xtx.T, rtol=0.0, atol=1e-12 * max(scale, 1.0)):
            raise ValueError("xtx is not symmetric")
        xtx = _frozen_array((xtx + xtx.T) / 2.0)
        if xtx[0, 0] != n_total:
            raise ValueError(
                f"xtx[0, 0] = {xtx[0, 0]} but n_total = {n_total} (intercept must be a column of ones)"
            )
        if not np.array_equal(gsx[:, 0], group_n.astype(np.float64)):
            raise ValueError("group_sum_x[:, 0] must equal group_n (intercept must be a column of ones)")
        # The per-group sums must add up to the global ones (up to summation order).
        diag = np.clip(np.diag(xtx), 0.0, None)
        tol_x = 1e-8 * np.sqrt(n_total * diag) + 1e-300
        bad = np.abs(gsx.sum(axis=0) - xtx[0]) > tol_x
        if np.any(bad):
            raise ValueError(
                "sum over groups of group_sum_x disagrees with xtx[0] for "
                + ", ".join(repr(names[k]) for k in np.flatnonzero(bad))
            )
        if abs(gsy.sum() - xty[0]) > 1e-8 * math.sqrt(n_total * yty) + 1e-300:
            raise ValueError("sum of group_sum_y disagrees with xty[0]")

        set_(self, "xtx", xtx)
        set_(self, "xty", xty)
        set_(self, "yty", yty)
        set_(self, "group_ids", group_ids)
        set_(self, "group_n", group_n)
        set_(self, "group_sum_x", gsx)
        set_(self, "group_sum_y", gsy)

    @property
    def n_terms(self) -> int:
        return len(self.term_names)

    @property
    def n_groups(self) -> int:
        return int(self.group_ids.shape[0])

    def empty_terms(self) -> tuple[str, ...]:
        """Terms whose design column is zero for every row (X'X diagonal 0), in design order."""
        return tuple(name for k, name in enumerate(self.term_names) if k > 0 and self.xtx[k, k] == 0.0)

    def without_terms(self, terms) -> SufficientStatistics:
        """The same statistics with the design columns of `terms` removed (not the intercept)."""
        drop = set(terms)
        unknown = sorted(drop - set(self.term_names[1:]))
        if unknown:
            raise ValueError(f"cannot remove {unknown}: not a term of the design (or the intercept)")
        keep = [k for k, name in enumerate(self.term_names) if name not in drop]
        return SufficientStatistics(
            term_names=tuple(self.term_names[k] for k in keep),
            n_total=self.n_total,
            xtx=self.xtx[np.ix_(keep, keep)],
            xty=self.xty[keep],
            yty=self.yty,
            group_ids=self.group_ids,
            group_n=self.group_n,
            group_sum_x=self.group_sum_x[:, keep],
            group_sum_y=self.group_sum_y,
        )

    @classmethod
    def from_arrays(cls, X, y, groups, term_names) -> SufficientStatistics:
        """Compute the statistics from pupil-level arrays (tests and small data).

        ``X`` is N x p and must include the intercept column of ones first, named
        ``"intercept"`` in ``term_names``; ``y`` has length N; ``groups`` has length
        N and holds any hashable labels (no missing values).  Groups come out in
        sorted label order.
        """
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        term_names = tuple(term_names)
        if X.ndim != 2 or X.shape[1] != len(term_names):
            raise ValueError(f"X has shape {X.shape}; expected N x {len(term_names)} (one column per term)")
        if y.shape != (X.shape[0],):
            raise ValueError(f"y has shape {y.shape}; expected ({X.shape[0]},)")
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise ValueError("X and y must be finite (drop or impute missing values first)")
        if X.shape[0] == 0:
            raise ValueError("no rows")
        if term_names[0] != "intercept" or not np.all(X[:, 0] == 1.0):
            raise ValueError("the first column must be the intercept: named 'intercept' and all ones")
        groups = np.asarray(groups)
        if groups.shape != (X.shape[0],):
            raise ValueError(f"groups has shape {groups.shape}; expected ({X.shape[0]},)")
        codes, uniques = pd.factorize(groups, sort=True)
        if np.any(codes < 0):
            raise ValueError("groups contains missing values")
        order = np.argsort(codes, kind="stable")
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        group_n = np.diff(np.r_[starts, sorted_codes.size])
        group_sum_x = np.add.reduceat(X[order], starts, axis=0)
        group_sum_y = np.add.reduceat(y[order], starts)
        return cls(
            term_names=term_names,
            n_total=X.shape[0],
            xtx=X.T @ X,
            xty=X.T @ y,
            yty=float(y @ y),
            group_ids=np.asarray(uniques),
            group_n=group_n,
            group_sum_x=group_sum_x,
            group_sum_y=group_sum_y,
        )


# ----------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class RemlResult:
    """A REML fit, on the original scale of the data.

    ``reml_criterion`` is -2 x the restricted log-likelihood at the optimum
    (lme4's ``REMLcrit``; statsmodels' ``-2 * llf`` for a REML fit)::

        (N - p) * (1 + log(2 pi sigma2_pupil)) + sum_j log(1 + n_j gamma) + log det(X'H^{-1}X)

    with ``gamma = sigma2_school / sigma2_pupil`` and ``H = V / sigma2_pupil``.
    ``covariance`` is, by default (``covariance_method == "conditional"``),
    ``sigma2_pupil * (X'H^{-1}X)^{-1}`` = ``(X'V^{-1}X)^{-1}``, the covariance of the
    GLS estimator at the estimated variance components (lme4's ``vcov``); with
    ``fit_reml(..., covariance="observed")`` it is statsmodels' observed-information
    version (see :func:`fit_reml`).  ``std_errors`` is the root of its diagonal.
    ``boundary`` is True when the school variance is estimated as exactly 0 (the
    fit is then ordinary least squares, and a warning is logged).
    ``iterations`` counts bounded-Brent iterations, ``evaluations`` all criterion
    evaluations (grid, Brent, polish, boundary); ``gradient`` is d REMLcrit /
    d log(gamma) at the reported interior optimum (0.0 on the boundary).
    """

    term_names: tuple[str, ...]
    coefficients: np.ndarray
    std_errors: np.ndarray
    covariance: np.ndarray
    sigma2_school: float
    sigma2_pupil: float
    reml_criterion: float
    boundary: bool
    n_groups: int
    n_total: int
    converged: bool
    iterations: int
    evaluations: int
    gradient: float = 0.0
    covariance_method: str = "conditional"
    group_ids: np.ndarray = field(default=None, repr=False)
    group_n: np.ndarray = field(default=None, repr=False)
    group_mean_residual: np.ndarray = field(default=None, repr=False)

    @property
    def gamma(self) -> float:
        """sigma2_school / sigma2_pupil."""
        return self.sigma2_school / self.sigma2_pupil

    @property
    def icc(self) -> float:
        """Intra-school correlation sigma2_school / (sigma2_school + sigma2_pupil)."""
        return self.sigma2_school / (self.sigma2_school + self.sigma2_pupil)

    @property
    def log_likelihood(self) -> float:
        """The restricted log-likelihood, ``-reml_criterion / 2``."""
        return -0.5 * self.reml_criterion

    def coefficient_table(self) -> pd.DataFrame:
        """Columns term, estimate, std_error (one row per term, design order)."""
        return pd.DataFrame(
            {"term": list(self.term_names), "estimate": self.coefficients, "std_error": self.std_errors}
        )

    def group_effects(self, level: float = 0.95) -> pd.DataFrame:
        """School effects (BLUPs of u_j) with normal intervals, one row per group.

        Columns: ``group``, ``n``, ``mean_residual`` (mean of y - x'beta over the
        group's pupils), ``shrinkage`` k_j = sigma2_school / (sigma2_school +
        sigma2_pupil / n_j), ``effect`` = k_j * mean_residual,
        ``conditional_variance`` = sigma2_school * sigma2_pupil / (sigma2_pupil +
        n_j * sigma2_school) (the variance of u_j given the data, at the estimated
        beta and variances), and ``lower``/``upper`` = effect -/+ z *
        sqrt(conditional_variance) with z the two-sided normal quantile for
        ``level`` (1.959963984540054 for 0.95).
        """
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        z = _Z_95 if level == 0.95 else float(norm.ppf(0.5 + level / 2.0))
        n = self.group_n.astype(np.float64)
        s2b, s2e = self.sigma2_school, self.sigma2_pupil
        shrink = s2b / (s2b + s2e / n) if s2b > 0 else np.zeros_like(n)
        effect = shrink * self.group_mean_residual
        cvar = s2b * s2e / (s2e + n * s2b)
        half = z * np.sqrt(cvar)
        return pd.DataFrame(
            {
                "group": self.group_ids,
                "n": self.group_n,
                "mean_residual": self.group_mean_residual,
                "shrinkage": shrink,
                "effect": effect,
                "conditional_variance": cvar,
                "lower": effect - half,
                "upper": effect + half,
            }
        )


# ------------------------------------------------------------------ design checks


def _check_design(stats: SufficientStatistics, tol: float) -> None:
    """Raise SingularDesignError naming the terms if X'X is singular."""
    names = stats.term_names
    N = float(stats.n_total)
    xtx = stats.xtx
    p = len(names)
    colsum = xtx[0]
    zero, constant, deps = [], [], []
    ok = []
    css = np.zeros(p)
    for k in range(1, p):
        if xtx[k, k] <= 0.0:
            zero.append(k)
            continue
        css[k] = xtx[k, k] - colsum[k] * colsum[k] / N
        if css[k] <= tol * xtx[k, k]:
            constant.append(k)
        else:
            ok.append(k)

    if ok:
        idx = np.array(ok)
        sd = np.sqrt(css[idx])
        C = xtx[np.ix_(idx, idx)] - np.outer(colsum[idx], colsum[idx]) / N
        R = C / np.outer(sd, sd)
        mean = colsum[idx] / N
        basis: list[int] = []  # positions into idx
        for pos in range(len(idx)):
            if not basis:
                basis.append(pos)
                continue
            B = np.array(basis)
            try:
                cf = linalg.cho_factor(R[np.ix_(B, B)], lower=True, check_finite=False)
                a = linalg.cho_solve(cf, R[B, pos], check_finite=False)
            except linalg.LinAlgError:  # pragma: no cover - basis is kept well conditioned
                a = np.linalg.lstsq(R[np.ix_(B, B)], R[B, pos], rcond=None)[0]
            resid = R[pos, pos] - R[pos, B] @ a
            if resid > tol:
                basis.append(pos)
                continue
            # x_k = sum_b a'_b x_b + a0 with a'_b = a_b sd_k / sd_b
            coef = a * sd[pos] / sd[B]
            a0 = mean[pos] - coef @ mean[B]
            big = np.abs(a) > 1e-6 * max(np.max(np.abs(a)), 1e-300)
            members = [names[idx[b]] for b in B[big]]
            if abs(a0) * math.sqrt(N) > 1e-7 * math.sqrt(xtx[idx[pos], idx[pos]]):
                members = ["intercept"] + members
            deps.append((names[idx[pos]], tuple(members)))

    if not (zero or constant or deps):
        return
    parts, dependencies, involved = [], [], set()
    for k in zero:
        parts.append(f"{names[k]!r} is all zero (e.g. a category with no pupils)")
        dependencies.append((names[k],))
        involved.add(names[k])
    for k in constant:
        parts.append(f"{names[k]!r} is constant (collinear with the intercept)")
        dependencies.append((names[k], "intercept"))
        involved.update((names[k], "intercept"))
    for term, members in deps:
        parts.append(
            f"{term!r} is an exact linear combination of " + ", ".join(repr(m) for m in members)
        )
        dependencies.append((term, *members))
        involved.update((term, *members))
    terms = tuple(t for t in names if t in involved)
    raise SingularDesignError(
        "singular fixed-effects design; offending terms: " + ", ".join(terms) + ". " + "; ".join(parts),
        terms=terms,
        dependencies=tuple(dependencies),
    )


# ------------------------------------------------------------------- the criterion


class _Problem:
    """The sufficient statistics in the centred/scaled internal basis.

    Internally X_int = X M (intercept kept, other columns (x - mean) / sd) and
    y_int = (y - mean_y) / sd_y; results are mapped back with M and sd_y.
    """

    def __init__(self, st: SufficientStatistics, force_per_group: bool = False):
        N = st.n_total
        p = st.n_terms
        self.N, self.p, self.dfree = N, p, N - p
        colsum = st.xtx[0].copy()
        mean = colsum / N
        css = np.diag(st.xtx)[1:] - colsum[1:] * colsum[1:] / N
        sd = np.sqrt(css / N)
        M = np.zeros((p, p))
        M[0, 0] = 1.0
        M[0, 1:] = -mean[1:] / sd
        M[np.arange(1, p), np.arange(1, p)] = 1.0 / sd
        self.M = M
        self.log_sd_sum = float(np.sum(np.log(sd)))

        mu_y = st.xty[0] / N
        syy = st.yty - N * mu_y * mu_y
        if not syy > 1e-14 * max(st.yty, 1e-300):
            raise DegenerateDataError("the response is constant: nothing to model")
        s_y = math.sqrt(syy / N)
        self.mu_y, self.s_y = mu_y, s_y

        xtx = np.zeros((p, p))
        xtx[0, 0] = N
        C = st.xtx[1:, 1:] - np.outer(colsum[1:], colsum[1:]) / N
        xtx[1:, 1:] = C / np.outer(sd, sd)
        xty = np.zeros(p)
        xty[1:] = (st.xty[1:] - colsum[1:] * mu_y) / (sd * s_y)
        self.xtx, self.xty, self.yty = xtx, xty, float(N)

        n = st.group_n.astype(np.float64)
        S = st.group_sum_x.copy()
        S[:, 1:] = (S[:, 1:] - np.outer(n, mean[1:])) / sd
        t = (st.group_sum_y - n * mu_y) / s_y
        self.S, self.t, self.n = S, t, n

        sizes, inverse, counts = np.unique(st.group_n, return_inverse=True, return_counts=True)
        K = sizes.size
        self.stacked = (not force_per_group) and K * p * p <= _MAX_STACK_ELEMENTS and 2 * K <= st.n_groups
        if self.stacked:
            order = np.argsort(inverse, kind="stable")
            starts = np.r_[0, np.cumsum(counts)[:-1]]
            Ms = np.empty((K, p, p))
            ms = np.empty((K, p))
            ws = np.empty(K)
            So, to = S[order], t[order]
            for k in range(K):
                sl = slice(starts[k], starts[k] + counts[k])
                Sk, tk = So[sl], to[sl]
                Ms[k] = Sk.T @ Sk
                ms[k] = Sk.T @ tk
                ws[k] = tk @ tk
            self.bin_n = sizes.astype(np.float64)
            self.bin_count = counts.astype(np.float64)
            self.Mflat = Ms.reshape(K, p * p)
            self.ms, self.ws = ms, ws
        else:
            self.bin_n = n
            self.bin_count = np.ones_like(n)
        self.evaluations = 0

    # -- pieces at a given gamma ------------------------------------------------
    def _weighted(self, w: np.ndarray):
        """sum_j w_j s_j s_j', sum_j w_j s_j t_j, sum_j w_j t_j^2 (w per bin)."""
        p = self.p
        if self.stacked:
            return (w @ self.Mflat).reshape(p, p), w @ self.ms, float(w @ self.ws)
        Sw = self.S * w[:, None]
        return Sw.T @ self.S, Sw.T @ self.t, float(w @ (self.t * self.t))

    def solve(self, gamma: float):
        """Return (crit_internal, beta, r, chol, logdetA) or None if not PD."""
        self.evaluations += 1
        c = gamma / (1.0 + self.bin_n * gamma)
        WS, Wt, Wtt = self._weighted(c)
        A = self.xtx - WS
        A = (A + A.T) / 2.0
        b = self.xty - Wt
        q = self.yty - Wtt
        try:
            chol = linalg.cho_factor(A, lower=True, check_finite=False)
        except linalg.LinAlgError:
            return None
        d = np.diag(chol[0])
        if np.any(d <= 0) or not np.all(np.isfinite(d)):
            return None
        beta = linalg.cho_solve(chol, b, check_finite=False)
        r = q - b @ beta
        if not r > 0:
            return None
        logdetA = 2.0 * float(np.sum(np.log(d)))
        logdetH = float(self.bin_count @ np.log1p(self.bin_n * gamma))
        crit = self.dfree * (1.0 + _LOG_2PI + math.log(r / self.dfree)) + logdetH + logdetA
        return crit, beta, r, chol, logdetA

    def criterion(self, theta: float) -> float:
        """Internal-scale criterion at log(gamma) = theta (inf where undefined)."""
        out = self.solve(math.exp(theta))
        return math.inf if out is None else out[0]

    def gradient(self, theta: float) -> float:
        """d criterion / d log(gamma)."""
        gamma = math.exp(theta)
        out = self.solve(gamma)
        if out is None:
            return math.nan
        _, beta, r, chol, _ = out
        dc = 1.0 / (1.0 + self.bin_n * gamma) ** 2  # d c / d gamma, per bin
        Ainv = linalg.cho_solve(chol, np.eye(self.p), check_finite=False)
        if self.stacked:
            tr = self.Mflat @ Ainv.ravel()  # s' A^-1 s summed within bins
            bb = np.outer(beta, beta).ravel()
            e2 = self.ws - 2.0 * (self.ms @ beta) + self.Mflat @ bb  # sum of (t - s'beta)^2 in bins
        else:
            tr = np.sum((self.S @ Ainv) * self.S, axis=1)
            e2 = (self.t - self.S @ beta) ** 2
        dr = -float(dc @ e2)
        dlogH = float(self.bin_count @ (self.bin_n / (1.0 + self.bin_n * gamma)))
        dlogA = -float(dc @ tr)
        return gamma * (self.dfree * dr / r + dlogH + dlogA)

    def _group_residual_moments(self, beta: np.ndarray, w: np.ndarray):
        """sum_j w_j s_j e_j (p-vector) and sum_j w_j e_j^2, e_j = t_j - s_j'beta."""
        p = self.p
        if self.stacked:
            WM = (w @ self.Mflat).reshape(p, p)
            se = w @ self.ms - WM @ beta
            e2 = float(w @ self.ws - 2.0 * (w @ self.ms) @ beta + beta @ WM @ beta)
            return se, e2
        e = self.t - self.S @ beta
        return self.S.T @ (w * e), float(w @ (e * e))

    def observed_covariance(self, gamma: float) -> np.ndarray:
        """Covariance of beta (internal scale) from the inverse observed information
        of the scale-profiled restricted log-likelihood in (beta, gamma).

        This is statsmodels' ``MixedLM`` convention (``bse_fe``): the same
        ``-A / sigma2`` beta-block as the conditional covariance, plus the
        observed (not expected, which is 0) beta-gamma cross term.
        """
        _, beta, r, chol, _ = self.solve(gamma)
        p = self.p
        s2 = r / self.dfree
        nb = self.bin_n
        d1 = 1.0 / (1.0 + nb * gamma) ** 2  # d c / d gamma
        d2 = -2.0 * nb / (1.0 + nb * gamma) ** 3  # d2 c / d gamma2
        se_1, e2_1 = self._group_residual_moments(beta, d1)
        h_bg = -se_1 / s2
        _, e2_2 = self._group_residual_moments(beta, d2)
        r1, r2 = -e2_1, -e2_2
        A1 = -self._weighted(d1)[0]
        A2 = -self._weighted(d2)[0]
        AiA1 = linalg.cho_solve(chol, A1, check_finite=False)
        AiA2 = linalg.cho_solve(chol, A2, check_finite=False)
        h_gg = (
            -0.5 * self.dfree * (r2 / r - (r1 / r) ** 2)
            + 0.5 * float(self.bin_count @ (nb * nb / (1.0 + nb * gamma) ** 2))
            - 0.5 * (np.trace(AiA2) - np.sum(AiA1 * AiA1.T))
        )
        A = self.xtx - self._weighted(gamma / (1.0 + nb * gamma))[0]
        info = np.empty((p + 1, p + 1))
        info[:p, :p] = (A + A.T) / (2.0 * s2)
        info[:p, p] = info[p, :p] = -h_bg
        info[p, p] = -h_gg
        cov = linalg.solve(info, np.eye(p + 1), assume_a="sym")[:p, :p]
        return (cov + cov.T) / 2.0

    def to_original(self, crit_int: float) -> float:
        return crit_int + self.dfree * 2.0 * math.log(self.s_y) + 2.0 * self.log_sd_sum


def reml_criterion(stats: SufficientStatistics, gamma: float) -> float:
    """lme4's REMLcrit at a given gamma = sigma2_school / sigma2_pupil >= 0.

    For diagnostics and tests (profile plots); raises like :func:`fit_reml` for a
    singular design, returns ``inf`` where the criterion is undefined.
    """
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    _check_design(stats, DEFAULT_COLLINEARITY_TOL)
    prob = _Problem(stats)
    out = prob.solve(float(gamma))
    if out is None:
        return math.inf
    return prob.to_original(out[0])


# -------------------------------------------------------------------------- the fit


def fit_reml(
    stats: SufficientStatistics,
    *,
    min_groups: int = DEFAULT_MIN_GROUPS,
    collinearity_tol: float = DEFAULT_COLLINEARITY_TOL,
    gamma_bounds: tuple[float, float] = DEFAULT_GAMMA_BOUNDS,
    covariance: str = "conditional",
    xatol: float = 1e-10,
    maxiter: int = 500,
    _force_per_group: bool = False,
) -> RemlResult:
    """Fit the random-intercept model by exact REML from sufficient statistics.

    Raises :class:`TooFewGroupsError` if there are fewer than ``min_groups``
    groups (default :data:`DEFAULT_MIN_GROUPS`, at least 2),
    :class:`SingularDesignError` (naming the terms) if X'X is singular, and
    :class:`DegenerateDataError` if the data cannot identify the model.  A school
    variance estimated at 0 is returned with ``boundary=True`` and a logged
    warning.  See the module docstring for the criterion and the algorithm.

    ``covariance`` chooses the covariance of the fixed effects:

    ``"conditional"`` (default)
        ``(X'V^{-1}X)^{-1} = sigma2_pupil * (X'H^{-1}X)^{-1}``, the GLS covariance
        at the estimated variance components, as lme4's ``vcov()`` and the
        model-based default of SAS PROC MIXED.
    ``"observed"``
        the beta block of the inverse observed information of the scale-profiled
        REML log-likelihood in (beta, gamma), which adds the (expectation-zero)
        beta-gamma cross term; this is what statsmodels' ``MixedLM`` reports as
        ``bse_fe``.  The two usually differ little (at most 0.16% on mlmRev's
        Exam data) but not always (2.1% for ``ses`` on mlmRev's Hsb82).  On the
        boundary (gamma = 0) the conditional one is used.
    """
    if covariance not in ("conditional", "observed"):
        raise ValueError(f"covariance must be 'conditional' or 'observed', got {covariance!r}")
    if int(min_groups) != min_groups or min_groups < 2:
        raise ValueError(f"min_groups must be an integer >= 2, got {min_groups!r}")
    lo, hi = (float(v) for v in gamma_bounds)
    if not 0 < lo < hi:
        raise ValueError(f"gamma_bounds must satisfy 0 < low < high, got {gamma_bounds!r}")
    G, N, p = stats.n_groups, stats.n_total, stats.n_terms
    if G < min_groups:
        raise TooFewGroupsError(
            f"{G} group(s) but at least {min_groups} are required to estimate a school variance",
            n_groups=G,
            min_groups=int(min_groups),
        )
    _check_design(stats, collinearity_tol)
    if N <= p:
        raise DegenerateDataError(f"{N} pupils for {p} fixed effects: no residual degrees of freedom")
    if N <= G:
        raise DegenerateDataError(
            "no school has two or more pupils: school and pupil variances are not separately identifiable"
        )

    prob = _Problem(stats, force_per_group=_force_per_group)

    # gamma = 0: ordinary least squares.
    zero = prob.solve(0.0)
    if zero is None:
        raise DegenerateDataError("the model fits the response exactly (zero residual variance)")
    f0 = zero[0]

    # Coarse grid over log10(gamma), extended upwards while still falling.
    log10 = np.arange(math.log10(lo), math.log10(hi) + 1e-9, _GRID_STEP_LOG10)
    thetas = list(log10 * math.log(10.0))
    fs = [prob.criterion(th) for th in thetas]
    while int(np.argmin(fs)) == len(fs) - 1 and thetas[-1] < math.log(_GAMMA_HARD_MAX):
        thetas.append(thetas[-1] + _GRID_STEP_LOG10 * math.log(10.0))
        fs.append(prob.criterion(thetas[-1]))
    i = int(np.argmin(fs))
    at_top = i == len(fs) - 1
    if not math.isfinite(fs[i]):
        raise DegenerateDataError("the REML criterion is undefined over the whole search range")
    a = thetas[i - 1] if i > 0 else thetas[0] - 4.0 * math.log(10.0)
    b = thetas[i + 1] if i + 1 < len(thetas) else thetas[i]
    res = optimize.minimize_scalar(
        prob.criterion, bounds=(a, b), method="bounded", options={"xatol": xatol, "maxiter": maxiter}
    )
    theta, f_theta = float(res.x), float(res.fun)
    if fs[i] < f_theta:  # Brent never looks at the bracket centre exactly
        theta, f_theta = thetas[i], fs[i]

    # Polish: root of the analytic derivative in a small bracket around Brent's
    # answer.  Near the optimum the criterion is flat to within its rounding noise
    # (a few 1e-10 for N ~ 1e5), which limits Brent to ~1e-7 in log(gamma); the
    # derivative is computed directly and pins the optimum down to ~1e-12.
    h = 1e-4
    noise = 64.0 * np.finfo(float).eps * (abs(f_theta) + prob.N)
    try:
        g_lo, g_hi = prob.gradient(theta - h), prob.gradient(theta + h)
        if g_lo < 0 < g_hi:
            root = optimize.brentq(
                prob.gradient, theta - h, theta + h, xtol=1e-14, rtol=4 * np.finfo(float).eps
            )
            f_root = prob.criterion(root)
            if f_root <= f_theta + noise:
                theta, f_theta = float(root), f_root
    except (ValueError, RuntimeError):  # pragma: no cover - keep Brent's answer
        pass

    boundary = f0 <= f_theta + max(_BOUNDARY_CRITERION_TOL, noise)
    converged = bool(res.success) and not at_top
    if boundary:
        gamma, sol, grad = 0.0, zero, 0.0
        converged = True
    else:
        gamma = math.exp(theta)
        sol = prob.solve(gamma)
        grad = prob.gradient(theta)
    crit_int, beta_int, r, chol, _ = sol

    s2 = r / prob.dfree  # internal scale
    cov_int = s2 * linalg.cho_solve(chol, np.eye(p), check_finite=False)
    covariance_method = "conditional"
    if covariance == "observed" and not boundary:
        cov_obs = prob.observed_covariance(gamma)
        if np.all(np.isfinite(cov_obs)) and np.all(np.diag(cov_obs) > 0):
            cov_int, covariance_method = cov_obs, "observed"
        else:  # pragma: no cover - information not positive definite
            logger.warning(
                "REML: observed information not positive definite; using the conditional covariance"
            )
    M, s_y = prob.M, prob.s_y
    coef = s_y * (M @ beta_int)
    coef[0] += prob.mu_y
    cov = (s_y * s_y) * (M @ cov_int @ M.T)
    cov = (cov + cov.T) / 2.0
    sigma2_pupil = s2 * s_y * s_y
    sigma2_school = gamma * sigma2_pupil
    mean_resid = s_y * (prob.t - prob.S @ beta_int) / prob.n

    result = RemlResult(
        term_names=stats.term_names,
        coefficients=_frozen_array(coef),
        std_errors=_frozen_array(np.sqrt(np.diag(cov))),
        covariance=_frozen_array(cov),
        sigma2_school=float(sigma2_school),
        sigma2_pupil=float(sigma2_pupil),
        reml_criterion=float(prob.to_original(crit_int)),
        boundary=bool(boundary),
        n_groups=G,
        n_total=N,
        converged=converged,
        iterations=int(getattr(res, "nit", 0) or 0),
        evaluations=prob.evaluations,
        gradient=float(grad),
        covariance_method=covariance_method,
        group_ids=stats.group_ids,
        group_n=stats.group_n,
        group_mean_residual=_frozen_array(mean_resid),
    )
    if boundary:
        logger.warning(
            "REML: school variance estimated at the boundary (0) for %d groups / %d pupils; "
            "the fit is ordinary least squares and all school effects are 0",
            G,
            N,
        )
    if at_top:
        logger.warning(
            "REML: criterion still decreasing at gamma = %.3g (school variance dwarfs pupil variance); "
            "the fit is reported as not converged",
            math.exp(thetas[-1]),
        )
    elif not converged:
        logger.warning("REML: bounded optimisation did not converge (%s)", getattr(res, "message", ""))
    logger.debug(
        "REML fit: G=%d N=%d p=%d gamma=%.6g crit=%.10g evals=%d stacked=%s",
        G, N, p, gamma, result.reml_criterion, prob.evaluations, prob.stacked,
    )
    return result
