"""The perfect-eyes learner: it recovers a bilinear taste from Plackett-Luce picks, shrinks toward the
profile, and gives a merchant without training picks its profile's taste alone."""

import numpy as np
import torch

from perfusion_cli.evaluation.taste_learner import fit_taste, profile_onehot


def simulate(rng: np.random.Generator, weights: np.ndarray, offsets: np.ndarray, ids: np.ndarray,
             groups_per_merchant: int, size: int = 5):
    """Groups of ``size`` candidates with random attributes; one pick a group by Gumbel-max on the true
    scores (Plackett-Luce at temperature 1)."""
    merchants = np.repeat(np.arange(len(ids)), groups_per_merchant)
    image = rng.normal(size=(len(merchants), size, weights.shape[1])).astype(np.float32)
    psi = profile_onehot(torch.as_tensor(ids[merchants]), [len(ids), 3, 2]).numpy()
    taste = psi @ weights + offsets[merchants]
    utility = (image * taste[:, None, :]).sum(-1)
    picked = np.zeros(utility.shape, dtype=bool)
    picked[np.arange(len(utility)), np.argmax(utility + rng.gumbel(size=utility.shape), axis=1)] = True
    return (torch.from_numpy(image), torch.from_numpy(psi), [f"m{m}" for m in merchants], torch.from_numpy(picked),
            torch.ones(picked.shape, dtype=torch.bool))


def test_it_recovers_a_profile_taste_from_picks():
    rng = np.random.default_rng(0)
    merchants = 60
    ids = np.column_stack([np.arange(merchants) + 1, rng.integers(0, 3, merchants), rng.integers(0, 2, merchants)])
    weights = rng.normal(0, 1.0, (1 + 3 + 2, 4))
    image, psi, names, picked, valid = simulate(rng, weights, np.zeros((merchants, 4)), ids, 40)
    learned = fit_taste(image, psi, names, picked, valid, l2_profile=1e-3, l2_personal=10.0)
    # the profile's taste is identified up to what the constant and the one-hots share: compare the tastes
    every_profile = profile_onehot(torch.tensor([[0, c, r] for c in range(3) for r in range(2)]), [merchants + 1, 3, 2])
    truth, fitted = every_profile.numpy() @ weights, (every_profile @ learned.weights).numpy()
    assert np.corrcoef(truth.ravel(), fitted.ravel())[0, 1] > 0.95
    # a merchant it never saw is scored by its profile alone
    scores = learned.scores(image[:1], psi[:1], ["never seen"])
    assert torch.allclose(scores, (image[:1] * (psi[:1] @ learned.weights)[:, None, :]).sum(-1))


def test_personal_offsets_follow_the_personal_picks_and_shrink():
    rng = np.random.default_rng(1)
    merchants = 20
    ids = np.column_stack([np.arange(merchants) + 1, np.zeros(merchants, int), np.zeros(merchants, int)])
    offsets = rng.normal(0, 1.0, (merchants, 3))
    image, psi, names, picked, valid = simulate(rng, np.zeros((6, 3)), offsets, ids, 60)
    loose = fit_taste(image, psi, names, picked, valid, l2_personal=0.1)
    tight = fit_taste(image, psi, names, picked, valid, l2_personal=1000.0)
    learned = np.stack([loose.offsets[f"m{m}"].numpy() for m in range(merchants)])
    assert np.corrcoef(offsets.ravel(), learned.ravel())[0, 1] > 0.9
    assert sum(float(o.norm()) for o in tight.offsets.values()) < 0.2 * sum(float(o.norm()) for o in loose.offsets.values())
