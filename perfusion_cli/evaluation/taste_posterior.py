"""What a merchant's training picks say about its hidden taste (synthetic data): the records ceiling.

The oracle knows each merchant's personal offsets exactly. A model knows only the merchant's profile and
its training sessions, so the oracle is out of reach for a merchant with few records however good the
model. The best any model can do with what it is given is to know everything else about the marketplace
— the taste's form (``oracle.parts_of``), the profile's part of it (``synthetic.profile_taste``), how far
merchants stray from their profile (``synthetic.PERSONAL_SPREAD``) and the pick noise — and to infer the
rest from the picks. ``TastePosterior`` does that by importance sampling (tastes drawn from the prior,
each weighted by the likelihood of the merchant's training picks; an adapted proposal where the picks
narrow the posterior) and scores a candidate by its expected utility under that posterior. A merchant
with no training sessions (cold start) gets the prior's expected utility.

The picks were made by Gumbel-max (``synthetic.choose_selected``): the top n of utility plus Gumbel noise of
scale ``noise``, which is Plackett-Luce with temperature ``noise``; the likelihood of an unordered set of n
picks sums Plackett-Luce over their orders.
"""

from __future__ import annotations

import zlib
from itertools import permutations

import numpy as np

from perfusion_cli.marketplace.oracle import ImageFeatures, utilities
from perfusion_cli.marketplace.synthetic import PERSONAL_SPREAD, personal_parts, profile_taste

SAMPLES = 8192


def picks_log_likelihood(scores: np.ndarray, selected: np.ndarray, noise: float) -> np.ndarray:
    """log P(the ``selected`` candidates are the top ones, in any order) under Plackett-Luce with
    temperature ``noise``, for each row of ``scores`` ([S, K] utilities, ``selected`` [K] bool): [S]."""
    logits = np.asarray(scores, dtype=np.float64) / noise
    chosen = np.flatnonzero(selected)
    if len(chosen) in (0, logits.shape[1]):
        return np.zeros(logits.shape[0])  # nothing, or everything, was picked: the picks say nothing
    orders = []
    for order in permutations(chosen):
        remaining = np.ones(logits.shape[1], dtype=bool)
        total = np.zeros(logits.shape[0])
        for index in order:
            total += logits[:, index] - np.logaddexp.reduce(logits[:, remaining], axis=1)
            remaining[index] = False
        orders.append(total)
    return np.logaddexp.reduce(np.stack(orders), axis=0)


class TastePosterior:
    """One merchant's hidden taste as its profile and the picks seen so far say it.

    Sessions are kept, and the posterior is drawn when first asked for: ``SAMPLES`` draws of the personal
    offsets from the prior, each weighted by the picks' likelihood. A merchant with many sessions has a
    narrow posterior that few prior draws land in; while the effective sample size is under
    ``ENOUGH_SAMPLES``, up to ``ROUNDS`` more rounds draw from a normal fitted to the weighted draws
    (widened), weighted by prior × likelihood / proposal (importance sampling with an adapted proposal)."""

    ENOUGH_SAMPLES = 500
    ROUNDS = 6

    def __init__(self, merchant_id: str, profile: dict, mix: str, noise: float, samples: int = SAMPLES):
        self.seed = zlib.crc32(merchant_id.encode())  # the same draws on every run, whatever the call order
        self.profile, self.mix, self.noise, self.samples = profile, mix, noise, samples
        self.parts = personal_parts(mix)
        self.spread = np.array([PERSONAL_SPREAD[part] for part in self.parts])
        self.observed: list[tuple[ImageFeatures, np.ndarray]] = []
        self._drawn = None

    @property
    def sessions(self) -> int:
        return len(self.observed)

    def observe(self, features: ImageFeatures, selected: np.ndarray) -> None:
        """One session: its candidates' features (``oracle.stack``) and which were picked."""
        self.observed.append((features, np.asarray(selected, dtype=bool)))
        self._drawn = None

    def _tastes(self, offsets: np.ndarray):
        personal = {part: offsets[:, [index]] for index, part in enumerate(self.parts)}
        return profile_taste(self.profile["category"], self.profile["style"], self.profile["region"],
                             float(self.profile["price_level"]), self.mix, personal)

    def _log_likelihood(self, tastes) -> np.ndarray:
        total = np.zeros(self.samples)
        for features, selected in self.observed:
            total += picks_log_likelihood(utilities(tastes, features), selected, self.noise)
        return total

    def _draw(self):
        """(tastes, normalized weights) of the posterior."""
        if self._drawn is not None:
            return self._drawn
        rng = np.random.default_rng(self.seed)
        offsets = rng.normal(0.0, self.spread, (self.samples, len(self.parts)))
        tastes = self._tastes(offsets)
        weights = _normalized(self._log_likelihood(tastes))  # prior draws: the weight is the likelihood
        for _ in range(self.ROUNDS):
            if _effective_size(weights) >= self.ENOUGH_SAMPLES:
                break
            mean = weights @ offsets
            covariance = ((offsets - mean).T * weights) @ (offsets - mean)
            covariance = 2.0 * covariance + np.diag((0.05 * self.spread) ** 2)  # widened, never degenerate
            offsets = rng.multivariate_normal(mean, covariance, self.samples)
            tastes = self._tastes(offsets)
            log_prior = -0.5 * np.square(offsets / self.spread).sum(axis=1)
            weights = _normalized(self._log_likelihood(tastes) + log_prior
                                  - _normal_log_density(offsets, mean, covariance))
        self._drawn = (tastes, weights)
        return self._drawn

    def weights(self) -> np.ndarray:
        return self._draw()[1]

    @property
    def tastes(self):
        """The drawn tastes (a ``Taste`` of [samples, 1] arrays), in the order of ``weights``."""
        return self._draw()[0]

    def effective_samples(self) -> float:
        """How many draws carry the posterior (1/Σw²); low means a coarse estimate."""
        return _effective_size(self.weights())

    def expected_utility(self, features: ImageFeatures) -> np.ndarray:
        """Each candidate's utility averaged over the posterior: [C]."""
        tastes, weights = self._draw()
        return weights @ utilities(tastes, features)


def _normalized(log_weights: np.ndarray) -> np.ndarray:
    weights = np.exp(log_weights - log_weights.max())
    return weights / weights.sum()


def _effective_size(weights: np.ndarray) -> float:
    return float(1.0 / np.square(weights).sum())


def _normal_log_density(points: np.ndarray, mean: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """log N(points; mean, covariance) up to the constant the prior's density also leaves out."""
    cholesky = np.linalg.cholesky(covariance)
    solved = np.linalg.solve(cholesky, (points - mean).T)
    return -0.5 * np.square(solved).sum(axis=0) - np.log(np.diag(cholesky)).sum()
