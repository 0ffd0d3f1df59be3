"""The records ceiling's posterior (issue 17): its pick likelihood is the marketplace's own pick process,
and the picks move the posterior to the merchant's hidden taste."""

from collections import Counter

import numpy as np
import pytest

from perfusion_cli.marketplace.oracle import ImageFeatures, utilities
from perfusion_cli.marketplace.synthetic import choose_selected, profile_taste
from perfusion_cli.evaluation.taste_posterior import TastePosterior, picks_log_likelihood

PROFILE = {"category": "womenswear", "style": "bohemian", "region": "nordic", "price_level": 30.0}


def test_the_pick_likelihood_is_the_frequency_of_the_marketplaces_picks():
    utilities_ = np.array([0.9, 0.4, -0.2, 0.1])
    rng = np.random.default_rng(0)
    draws = [choose_selected(utilities_, rng, noise=0.3) for _ in range(60_000)]
    by_size = {1: Counter(), 2: Counter()}
    for selected in draws:
        by_size[int(selected.sum())][tuple(np.flatnonzero(selected))] += 1
    for size, counts in by_size.items():
        total = sum(counts.values())
        for chosen, count in counts.items():
            selected = np.isin(np.arange(4), chosen)
            expected = float(np.exp(picks_log_likelihood(utilities_[None], selected, 0.3))[0])
            assert count / total == pytest.approx(expected, abs=0.01), (size, chosen)


def test_one_pick_is_a_softmax_and_two_picks_sum_both_orders():
    scores = np.array([[1.0, 0.0, 0.5]])
    z = np.exp(scores[0] / 0.5)
    one = picks_log_likelihood(scores, np.array([False, False, True]), 0.5)
    assert one[0] == pytest.approx(np.log(z[2] / z.sum()))
    two = picks_log_likelihood(scores, np.array([True, False, True]), 0.5)
    by_hand = z[0] / z.sum() * z[2] / (z[1] + z[2]) + z[2] / z.sum() * z[0] / (z[0] + z[1])
    assert two[0] == pytest.approx(np.log(by_hand))
    assert picks_log_likelihood(scores, np.ones(3, bool), 0.5)[0] == 0.0, "everything picked says nothing"


def _candidates(rng, count):
    return ImageFeatures(present=np.ones(count, bool), hue=rng.uniform(0, 1, count),
                         saturation=rng.uniform(0.1, 0.9, count), lightness=rng.uniform(0.25, 0.8, count),
                         busyness=rng.uniform(0, 1, count), scale=rng.uniform(0.54, 0.9, count),
                         aspect=np.exp(rng.uniform(-0.4, 0.4, count)))


PERSONAL = {"hue": 0.05, "lightness": 0.0, "pattern": -0.4, "scale": 0.3, "width": -0.9, "vivid": 0.6}


def _observed(posterior, hidden, sessions, seed):
    rng = np.random.default_rng(seed)
    for _ in range(sessions):
        session = _candidates(rng, 5)
        posterior.observe(session, choose_selected(utilities(hidden, session), rng, 0.3))
    return posterior


def _mean(posterior, part):
    return float(posterior.weights() @ getattr(posterior.tastes, part)[:, 0])


def test_many_picks_lead_the_posterior_to_the_hidden_taste():
    hidden = profile_taste(**PROFILE, mix="mixed", personal=PERSONAL)
    fresh = _candidates(np.random.default_rng(1), 400)
    truth = utilities(hidden, fresh)
    prior = TastePosterior("m0001", PROFILE, "mixed", noise=0.3).expected_utility(fresh)
    posterior = _observed(TastePosterior("m0001", PROFILE, "mixed", noise=0.3), hidden, 300, seed=2)
    assert posterior.sessions == 300 and posterior.effective_samples() >= posterior.ENOUGH_SAMPLES
    # the parts far from the profile's are found: width (profile 0.4, hidden -0.5), vividness (-0.6 → 0.0)
    assert _mean(posterior, "width") == pytest.approx(hidden.width, abs=0.15)
    assert _mean(posterior, "vivid") == pytest.approx(hidden.vivid, abs=0.15)
    before, after = np.corrcoef(prior, truth)[0, 1], np.corrcoef(posterior.expected_utility(fresh), truth)[0, 1]
    assert after > 0.97 and after > before + 0.1, (before, after)


def test_the_adapted_draws_agree_with_many_prior_draws():
    hidden = profile_taste(**PROFILE, mix="mixed", personal=PERSONAL)
    adapted = _observed(TastePosterior("m0001", PROFILE, "mixed", noise=0.3), hidden, 20, seed=3)
    plain = _observed(TastePosterior("m0001", PROFILE, "mixed", noise=0.3, samples=200_000), hidden, 20, seed=3)
    plain.ROUNDS = 0  # the prior's draws alone: unbiased, and with this many of them, accurate
    assert plain.effective_samples() > 300
    for part in ("lightness", "pattern", "scale", "width", "vivid"):
        assert _mean(adapted, part) == pytest.approx(_mean(plain, part), abs=0.05), part
    fresh = _candidates(np.random.default_rng(4), 200)
    assert np.corrcoef(adapted.expected_utility(fresh), plain.expected_utility(fresh))[0, 1] > 0.995


def test_without_records_the_posterior_is_the_prior_and_the_same_on_every_run():
    rng = np.random.default_rng(2)
    fresh = _candidates(rng, 50)
    one = TastePosterior("m0007", PROFILE, "mixed", noise=0.3).expected_utility(fresh)
    two = TastePosterior("m0007", PROFILE, "mixed", noise=0.3)
    assert np.array_equal(one, two.expected_utility(fresh))
    # asked before and after its sessions, a posterior gives what one asked only after them gives
    hidden = profile_taste(**PROFILE, mix="mixed", personal=PERSONAL)
    early = TastePosterior("m0007", PROFILE, "mixed", noise=0.3)
    early.expected_utility(fresh)
    late = _observed(TastePosterior("m0007", PROFILE, "mixed", noise=0.3), hidden, 40, seed=5)
    assert np.array_equal(_observed(early, hidden, 40, seed=5).expected_utility(fresh), late.expected_utility(fresh))
    assert two.effective_samples() == pytest.approx(len(two.weights())), "no picks: every prior draw counts alike"
    # the prior's mean taste is near the profile's own (offsets have mean 0; clipping and hue's cosine bend it)
    profile = utilities(profile_taste(**PROFILE, mix="mixed"), fresh)
    assert np.corrcoef(one, profile)[0, 1] > 0.9
