"""Second-layer methods: scikit-learn style estimators over member OOF predictions.

Every method takes X as a list of (n, 6) member prediction arrays or one (n_members, n, 6) array, stores only
its parameters in `__init__` (so `sklearn.base.clone` works), learns attributes ending in `_` in `fit`, and
clips `predict` to the score range. Weight methods expose `weights_` (n_members, 6) and `intercept_` (6,), one
column per trait; with `per_trait=False` the six columns are equal. An optional `meta` (n, k) array of
per-essay features (essay length, ...) is accepted by every method and used by the LightGBM stacker only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize, nnls
from sklearn.base import BaseEstimator
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import KFold

from fb3stack.constants import SCORE_MAX, SCORE_MIN
from fb3stack.metrics import mcrmse_stack, rmse_stack
from fb3stack.plugins import Registry

logger = logging.getLogger(__name__)

MemberPreds = Sequence[np.ndarray] | np.ndarray


def as_stack(X: MemberPreds) -> np.ndarray:
    """List of (n, t) arrays or an (m, n, t) array -> float64 (m, n, t), checked."""
    P = np.asarray(X if isinstance(X, np.ndarray) else np.stack([np.asarray(x) for x in X]), dtype=np.float64)
    if P.ndim != 3:
        raise ValueError(f"member predictions must be (n_members, n, n_traits), got shape {P.shape}")
    if not np.isfinite(P).all():
        raise ValueError("member predictions contain NaN or inf")
    return P


class Blender(BaseEstimator):
    """Shared fit checks, and predict = the method's raw prediction clipped to [SCORE_MIN, SCORE_MAX]."""

    def fit(self, X: MemberPreds, y: np.ndarray, meta: np.ndarray | None = None) -> Blender:
        P, y = as_stack(X), np.asarray(y, dtype=np.float64)
        if y.shape != P.shape[1:]:
            raise ValueError(f"y has shape {y.shape} but member predictions are {P.shape[1:]}")
        self.n_members_ = P.shape[0]
        self._fit(P, y, meta)
        return self

    def predict(self, X: MemberPreds, meta: np.ndarray | None = None) -> np.ndarray:
        P = as_stack(X)
        if P.shape[0] != self.n_members_:
            raise ValueError(f"fitted on {self.n_members_} members, got {P.shape[0]}")
        return np.clip(self._predict(P, meta), SCORE_MIN, SCORE_MAX)

    def _store(self, params: dict) -> None:
        """The constructor's arguments as same-named attributes, unchanged: what scikit-learn's get_params and
        clone read back."""
        vars(self).update({k: v for k, v in params.items() if k != "self"})

    def _fit(self, P: np.ndarray, y: np.ndarray, meta: np.ndarray | None) -> None:
        raise NotImplementedError

    def _predict(self, P: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError


# blend methods by the `kind:` a blend YAML names; plug-in packages add theirs under the entry-point group
# `fb3stack.blenders` (docs/extending.md)
BLEND_METHODS: Registry[type[Blender]] = Registry("blend method", "fb3stack.blenders", Blender)
register_blender = BLEND_METHODS.register  # class decorator: @register_blender("my-method")


class WeightBlender(Blender):
    """A weighted sum of members per trait: fit finds `weights_` (m, 6) and `intercept_` (6,)."""

    per_trait: bool = True

    def _fit(self, P: np.ndarray, y: np.ndarray, meta: np.ndarray | None) -> None:
        m, _, t = P.shape
        if self.per_trait:
            cols = [self._fit_weights(P[:, :, k], y[:, k]) for k in range(t)]
        else:  # one weight vector for all traits: stack the traits as extra rows
            flat = self._fit_weights(P.transpose(0, 2, 1).reshape(m, -1), y.T.reshape(-1))
            cols = [flat] * t
        self.weights_ = np.stack([c[0] for c in cols], axis=1)
        self.intercept_ = np.array([c[1] for c in cols])

    def _fit_weights(self, Pt: np.ndarray, yt: np.ndarray) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    def _predict(self, P: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        return np.einsum("mnt,mt->nt", P, self.weights_) + self.intercept_


@register_blender("mean")
class MeanBlend(WeightBlender):
    """The plain mean of the members: the baseline every other method must beat on held-out rows."""

    def __init__(self) -> None:
        pass

    def _fit_weights(self, Pt: np.ndarray, yt: np.ndarray) -> tuple[np.ndarray, float]:
        return np.full(len(Pt), 1.0 / len(Pt)), 0.0


@register_blender("best_member")
class BestMember(WeightBlender):
    """The single member with the lowest MCRMSE on the rows it is fitted on, used alone (weight 1, all traits).

    Not blending is always an option: nested CV of this "blend" scores choosing the best member inside each outer
    fold (the members' OOF rows are already held out for the first layer, so a member's score on the fitting rows
    is its honest score there), which is what a blend method must beat. `best_` is the chosen member's index.
    """

    def __init__(self) -> None:
        pass

    def _fit(self, P: np.ndarray, y: np.ndarray, meta: np.ndarray | None) -> None:
        self.best_ = int(np.argmin(mcrmse_stack(y, P)))
        self.weights_ = np.zeros((len(P), y.shape[1]))
        self.weights_[self.best_] = 1.0
        self.intercept_ = np.zeros(y.shape[1])


@register_blender("scipy")
class ScipyWeights(WeightBlender):
    """Weights minimising RMSE with scipy.optimize.

    SLSQP: weights within `bounds` (default non-negative) summing to 1. Nelder-Mead: unconstrained (bounds, when
    given, are enforced by clipping inside the objective). The objective is the MSE (same minimiser as the RMSE,
    smoother); `shrink` adds shrink * ||w - 1/m||^2, an L2 pull toward the plain mean that stops the weights
    chasing noise in a few thousand rows. With `shrink_grid` the shrink is chosen per fit (per trait) by an inner
    KFold on the rows given to `fit`, so no held-out row informs it; the choice is kept in `shrink_`.
    """

    def __init__(self, method: str = "SLSQP", bounds: tuple[float, float] | None = (0.0, 1.0), per_trait: bool = True,
                 shrink: float = 0.0, shrink_grid: list[float] | None = None, inner_folds: int = 4, seed: int = 0,
                 maxiter: int = 1000) -> None:
        self._store(locals())

    def _fit(self, P: np.ndarray, y: np.ndarray, meta: np.ndarray | None) -> None:
        self.shrink_: list[float] = []
        super()._fit(P, y, meta)

    def _fit_weights(self, Pt: np.ndarray, yt: np.ndarray) -> tuple[np.ndarray, float]:
        shrink = self.shrink
        if self.shrink_grid:
            kf = KFold(self.inner_folds, shuffle=True, random_state=self.seed)
            inner = list(kf.split(yt))
            errors = [sum(float(np.sum((self._solve(Pt[:, tr], yt[tr], s) @ Pt[:, te] - yt[te]) ** 2))
                          for tr, te in inner) for s in self.shrink_grid]
            shrink = float(self.shrink_grid[int(np.argmin(errors))])
        self.shrink_.append(shrink)
        return self._solve(Pt, yt, shrink), 0.0

    def _solve(self, Pt: np.ndarray, yt: np.ndarray, shrink: float) -> np.ndarray:
        m, n = Pt.shape
        uniform = np.full(m, 1.0 / m)
        lo, hi = self.bounds if self.bounds is not None else (-np.inf, np.inf)
        # MSE(w) = w'Gw - 2w'b + c: with the Gram matrix each evaluation costs O(m^2), not O(m n)
        G, b, c = Pt @ Pt.T / n, Pt @ yt / n, float(yt @ yt / n)
        clip = self.method != "SLSQP" and self.bounds is not None

        def loss_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            wc = np.clip(w, lo, hi) if clip else w
            mse = float(wc @ G @ wc - 2 * wc @ b + c)
            return mse + shrink * float(np.sum((wc - uniform) ** 2)), 2 * (G @ wc - b) + 2 * shrink * (wc - uniform)

        if self.method == "SLSQP":
            res = minimize(loss_grad, uniform, jac=True, method="SLSQP",
                           bounds=[(lo, hi)] * m if self.bounds is not None else None,
                           constraints=({"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": lambda w: np.ones(m)},),
                           options={"maxiter": self.maxiter, "ftol": 1e-10})
        elif self.method == "Nelder-Mead":
            res = minimize(lambda w: loss_grad(w)[0], uniform, method="Nelder-Mead",
                           options={"maxiter": self.maxiter * m, "xatol": 1e-6, "fatol": 1e-9, "adaptive": True})
        else:
            raise ValueError(f"ScipyWeights.method must be 'SLSQP' or 'Nelder-Mead', got {self.method!r}")
        return np.clip(res.x, lo, hi) if clip else res.x


@register_blender("nnls")
class NNLS(WeightBlender):
    """Non-negative least squares (scipy.optimize.nnls); `normalize` rescales the weights to sum to 1."""

    def __init__(self, per_trait: bool = True, normalize: bool = False) -> None:
        self._store(locals())

    def _fit_weights(self, Pt: np.ndarray, yt: np.ndarray) -> tuple[np.ndarray, float]:
        w, _ = nnls(Pt.T, yt)
        if self.normalize and w.sum() > 0:
            w = w / w.sum()
        return w, 0.0


@register_blender("hillclimb")
class HillClimb(WeightBlender):
    """Caruana et al. (2004) greedy ensemble selection with replacement.

    Starts from the best single member; each step mixes in the member (and, with `allow_negative`, the weight
    from `negative_grid` as in Deotte's hill climbing used by FB3's 3rd place) that lowers the RMSE most, and
    stops after `n_iter` steps or when no step improves by `tol`. With `n_bags` > 0 the selection is repeated
    on random subsets of `bag_fraction` of the members and the weights averaged (bagged ensemble selection,
    Caruana et al. 2006; AutoGluon's bagged variant), which smooths the choice between near-identical members.
    """

    def __init__(self, n_iter: int = 100, allow_negative: bool = False, per_trait: bool = True, n_bags: int = 0,
                 bag_fraction: float = 0.5, tol: float = 1e-7, seed: int = 0) -> None:
        self._store(locals())

    def _fit_weights(self, Pt: np.ndarray, yt: np.ndarray) -> tuple[np.ndarray, float]:
        m = len(Pt)
        if self.n_bags <= 0:
            return self._climb(Pt, yt), 0.0
        rng = np.random.default_rng(self.seed)
        k = max(min(2, m), int(round(self.bag_fraction * m)))  # a one-member bag is just a random member
        w = np.zeros(m)
        for _ in range(self.n_bags):
            idx = np.sort(rng.choice(m, size=k, replace=False))
            w[idx] += self._climb(Pt[idx], yt)
        return w / self.n_bags, 0.0

    def _climb(self, Pt: np.ndarray, yt: np.ndarray) -> np.ndarray:
        m = len(Pt)
        err = rmse_stack(yt, Pt)
        best = int(np.argmin(err))
        w, cur, cur_err, count = np.eye(m)[best], Pt[best].copy(), float(err[best]), 1
        for _ in range(self.n_iter):
            # Caruana: add one more copy of a member, i.e. mix weight 1/(count+1)
            steps = [1.0 / (count + 1)]
            if self.allow_negative:
                steps += [-0.05, -0.1, -0.2]
            trial = [(s, (1 - s) * cur[None] + s * Pt) for s in steps]
            scores = [(rmse_stack(yt, c), s, c) for s, c in trial]
            s_err, step, cand = min(scores, key=lambda x: x[0].min())
            j = int(np.argmin(s_err))
            if s_err[j] > cur_err - self.tol:
                break
            w = (1 - step) * w
            w[j] += step
            cur, cur_err = cand[j], float(s_err[j])
            count += 1 if step > 0 else 0
        return w


@register_blender("ridge")
class RidgeStacker(Blender):
    """Ridge regression on member predictions, per trait.

    `prior="mean"` fits the residual y - mean(members) on the members' deviations from that mean, so a large
    alpha shrinks the stacker back to the plain mean rather than to zero. `cross_trait` lets each trait use
    every trait's member predictions (6 x n_members features). `alphas` (a list) picks alpha per trait by
    RidgeCV's efficient leave-one-out on the training rows only.
    """

    def __init__(self, alpha: float = 100.0, alphas: list[float] | None = None, prior: str = "mean",
                 cross_trait: bool = False) -> None:
        self._store(locals())

    def _design(self, P: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        base = P.mean(axis=0) if self.prior == "mean" else np.zeros(P.shape[1:])
        dev = P - base[None] if self.prior == "mean" else P
        X = dev.transpose(1, 0, 2).reshape(P.shape[1], -1) if self.cross_trait else dev[:, :, k].T
        return X, base[:, k]

    def _fit(self, P: np.ndarray, y: np.ndarray, meta: np.ndarray | None) -> None:
        if self.prior not in ("mean", "none"):
            raise ValueError(f"RidgeStacker.prior must be 'mean' or 'none', got {self.prior!r}")
        self.models_ = []
        for k in range(y.shape[1]):
            X, base = self._design(P, k)
            model = RidgeCV(alphas=self.alphas) if self.alphas else Ridge(alpha=self.alpha)
            self.models_.append(model.fit(X, y[:, k] - base))

    def _predict(self, P: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        cols = []
        for k, model in enumerate(self.models_):
            X, base = self._design(P, k)
            cols.append(base + model.predict(X))
        return np.stack(cols, axis=1)


@register_blender("lgbm")
class LGBMStacker(Blender):
    """LightGBM per trait on a summary of the members (mean and spread per trait) plus optional meta-features.

    It learns the residual over the plain mean (`prior="mean"`), so with few trees it stays close to the mean
    and only corrects where the features (e.g. essay length) say the members are systematically off.
    `features="all"` feeds every member's prediction instead of the summary.
    """

    def __init__(self, n_estimators: int = 150, learning_rate: float = 0.03, num_leaves: int = 7,
                 min_child_samples: int = 50, subsample: float = 0.8, colsample_bytree: float = 0.8,
                 reg_lambda: float = 1.0, features: str = "summary", prior: str = "mean", n_jobs: int = 1,
                 seed: int = 0) -> None:
        self._store(locals())

    def _design(self, P: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        if self.features == "summary":
            parts = [P.mean(axis=0), P.std(axis=0)]
        elif self.features == "all":
            parts = [P.transpose(1, 0, 2).reshape(P.shape[1], -1)]
        else:
            raise ValueError(f"LGBMStacker.features must be 'summary' or 'all', got {self.features!r}")
        if meta is not None:
            parts.append(np.asarray(meta, dtype=np.float64).reshape(P.shape[1], -1))
        return np.hstack(parts)

    def _fit(self, P: np.ndarray, y: np.ndarray, meta: np.ndarray | None) -> None:
        import lightgbm as lgb

        X = self._design(P, meta)
        self.n_meta_ = 0 if meta is None else int(np.asarray(meta).reshape(len(X), -1).shape[1])
        base = P.mean(axis=0) if self.prior == "mean" else np.zeros_like(y)
        self.models_ = []
        for k in range(y.shape[1]):
            model = lgb.LGBMRegressor(
                n_estimators=self.n_estimators, learning_rate=self.learning_rate, num_leaves=self.num_leaves,
                min_child_samples=self.min_child_samples, subsample=self.subsample, subsample_freq=1,
                colsample_bytree=self.colsample_bytree, reg_lambda=self.reg_lambda, n_jobs=self.n_jobs,
                random_state=self.seed + k, verbose=-1,
            )
            self.models_.append(model.fit(X, y[:, k] - base[:, k]))

    def _predict(self, P: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
        if self.n_meta_ and meta is None:
            raise ValueError(f"this stacker was fitted with {self.n_meta_} meta-feature(s); pass meta to predict")
        X = self._design(P, meta if self.n_meta_ else None)
        base = P.mean(axis=0) if self.prior == "mean" else 0.0
        return base + np.stack([m.predict(X) for m in self.models_], axis=1)


def make_method(kind: str, params: dict | None = None) -> Blender:
    """The blend method registered as `kind` (built in or from a plug-in), constructed with `params`."""
    cls = BLEND_METHODS.get(kind)  # ConfigError (a ValueError) listing the known methods
    try:
        return cls(**(params or {}))
    except TypeError as err:
        raise ValueError(f"blend method {kind!r}: {err}") from err
