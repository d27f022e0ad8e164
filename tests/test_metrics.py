import math

import numpy as np
import pytest

from fb3stack.metrics import mcrmse, rmse_per_trait, score_report


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
