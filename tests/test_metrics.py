import math

import numpy as np
import pytest

from fb3stack.metrics import mcrmse, mcrmse_stack, rmse_per_trait, rmse_stack, score_report


def test_mcrmse_matches_hand_computation():
    y = np.array([[3.0, 2.0], [4.0, 2.5], [2.0, 3.0]])
    p = np.array([[3.5, 2.0], [4.0, 1.5], [1.0, 3.0]])
    # column 0 errors 0.5, 0, 1 -> rmse sqrt(1.25/3); column 1 errors 0, 1, 0 -> sqrt(1/3)
    expected = (math.sqrt(1.25 / 3) + math.sqrt(1 / 3)) / 2
    assert mcrmse(y, p) == pytest.approx(expected, abs=1e-12)
    assert rmse_per_trait(y, p) == pytest.approx([math.sqrt(1.25 / 3), math.sqrt(1 / 3)])


def test_mean_predictor_on_real_train(real_train_df):
    train_df = real_train_df
    from fb3stack.constants import TARGETS

    y = train_df[list(TARGETS)].to_numpy()
    report = score_report(y, np.broadcast_to(y.mean(0), y.shape))
    # the mean predictor's MCRMSE equals the mean of the population standard deviations
    assert report["mcrmse"] == pytest.approx(float(y.std(axis=0).mean()), abs=1e-12)
    assert 0.6 < report["mcrmse"] < 0.7
    assert set(report["rmse"]) == set(TARGETS)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape mismatch"):
        mcrmse(np.zeros((3, 6)), np.zeros((3, 5)))


def test_stacked_scores_are_the_single_scores_bit_for_bit():
    # the blenders' inner loops use the stacked form; a blend must not change with which form scored it
    rng = np.random.default_rng(0)
    y = rng.uniform(1, 5, size=(501, 6))
    preds = y[None] + rng.normal(0, 0.5, size=(4, 501, 6))
    per = rmse_stack(y, preds)
    assert per.shape == (4, 6)
    for k in range(4):
        np.testing.assert_array_equal(per[k], rmse_per_trait(y, preds[k]))
        assert mcrmse_stack(y, preds)[k] == mcrmse(y, preds[k])
    # one target column, (k, n) against (n,): the same numbers up to summation order (a contiguous axis is
    # summed pairwise by numpy)
    np.testing.assert_allclose(rmse_stack(y[:, 2], preds[:, :, 2]), per[:, 2], rtol=1e-14)
