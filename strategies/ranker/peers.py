"""The ranker's offline peers on the same features: logistic regression and LightGBM.

LightGBM is optional (the bench / dev extras pin it); without it the peer is reported as
unavailable with `LIGHTGBM_MISSING` and `abplatform train` still works.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import numpy.typing as npt

from strategies.ranker.metrics import fit_logistic

LIGHTGBM_MISSING = "lightgbm not installed"
LIGHTGBM_ROUNDS = 200
LIGHTGBM_PARAMS: dict[str, object] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 2,
    "verbose": -1,
}
"""Textbook defaults for a few hundred thousand rows, not tuned on the holdout."""


def lightgbm_available() -> bool:
    """Whether the lightgbm package can be imported."""
    return importlib.util.find_spec("lightgbm") is not None


def logistic_probabilities(
    x_train: npt.NDArray[np.float32],
    y_train: npt.NDArray[np.bool_],
    x_test: npt.NDArray[np.float32],
    seed: int,
) -> npt.NDArray[np.float64]:
    """p(label) of the test rows from an L2 logistic regression (0 with no training rows)."""
    del seed  # L-BFGS from zero is deterministic
    if y_train.size == 0:
        return np.zeros(x_test.shape[0])
    return fit_logistic(x_train, y_train).probabilities(x_test)


def lightgbm_probabilities(
    x_train: npt.NDArray[np.float32],
    y_train: npt.NDArray[np.bool_],
    x_test: npt.NDArray[np.float32],
    seed: int,
) -> npt.NDArray[np.float64]:
    """p(label) of the test rows from `LIGHTGBM_ROUNDS` boosted trees (seeded,
    deterministic); the training share of positives with fewer than two classes."""
    if y_train.size == 0 or y_train.all() or not y_train.any():
        return np.full(x_test.shape[0], float(y_train.mean()) if y_train.size else 0.0)
    import lightgbm

    train = lightgbm.Dataset(x_train, label=y_train.astype(np.float64))
    booster = lightgbm.train(
        {**LIGHTGBM_PARAMS, "seed": seed}, train, num_boost_round=LIGHTGBM_ROUNDS
    )
    return np.asarray(booster.predict(x_test), dtype=np.float64)
