"""The ranker's Keras deep-and-cross model and its training: the only ranker module with TF.

Import it lazily (inside `fit`): `import strategies.ranker` and serving stay TF-free.
"""

from __future__ import annotations

import os

# TFRS is written against Keras 2; see strategies/two_tower/model.py.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf
import tensorflow_recommenders as tfrs

from strategies.ranker.numpy_model import HEADS, RankerWeights

keras: Any = tf.keras


def build_model(width: int, hidden: tuple[int, ...], seed: int) -> Any:
    """Input -> Cross -> ReLU tower -> sigmoid heads `click` and `purchase`."""
    init = keras.initializers.GlorotUniform(seed=seed)
    x0 = keras.Input(shape=(width,), name="features")
    x = tfrs.layers.dcn.Cross(kernel_initializer=init, name="cross")(x0)
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(
            units, activation="relu", kernel_initializer=init, name=f"hidden{i}"
        )(x)
    outputs = {
        name: keras.layers.Dense(1, activation="sigmoid", kernel_initializer=init, name=name)(x)
        for name in HEADS
    }
    return keras.Model(inputs=x0, outputs=outputs)


def train_ranker(
    features: npt.NDArray[np.float32],
    clicked: npt.NDArray[np.bool_],
    purchased: npt.NDArray[np.bool_],
    *,
    hidden: tuple[int, ...],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> tuple[Any, RankerWeights]:
    """The trained Keras model and its weights; the purchase head learns on clicked rows."""
    tf.keras.utils.set_random_seed(seed)
    model = build_model(features.shape[1], hidden, seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss={name: keras.losses.BinaryCrossentropy() for name in HEADS},
    )
    weights = {"click": np.ones(clicked.size, np.float32), "purchase": clicked.astype(np.float32)}
    model.fit(
        features,
        {"click": clicked.astype(np.float32), "purchase": purchased.astype(np.float32)},
        sample_weight=weights,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        verbose=0,
    )
    return model, weights_of(model, len(hidden))


def weights_of(model: Any, n_hidden: int) -> RankerWeights:
    """The NumPy copy of a built model's weights."""

    def arrays(name: str) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        kernel, bias = model.get_layer(name).get_weights()
        return kernel.astype(np.float32), bias.astype(np.float32)

    cross = model.get_layer("cross")
    kernel, bias = (w.astype(np.float32) for w in cross.get_weights())
    return RankerWeights(
        kernel,
        bias,
        tuple(arrays(f"hidden{i}") for i in range(n_hidden)),
        {name: arrays(name) for name in HEADS},
    )


def keras_probabilities(model: Any, features: npt.NDArray[np.float32]) -> dict[str, Any]:
    """The Keras model's p(click), p(purchase | click) of each row (the parity oracle)."""
    out = model.predict(features, batch_size=4096, verbose=0)
    return {name: np.asarray(out[name], dtype=np.float64)[:, 0] for name in HEADS}
