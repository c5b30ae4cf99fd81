"""Validated parameters of the two-tower retrieval strategy."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from strategies.base import StrategyParams
from strategies.two_tower.compression import EmbeddingDtype

HiddenUnits = Annotated[int, Field(ge=1, le=8192)]


class TwoTowerParams(StrategyParams):
    """Parameters of the two-tower strategy (the seed comes from the experiment, not from here).

    Attributes
    ----------
    embedding_dim
        Size of the id embeddings and of both towers' output (the retrieval space).
    hidden_units
        Widths of the ReLU layers before each tower's final projection; ``[]`` for none.
    epochs
        Maximum passes over the training examples (early stopping may end sooner).
    batch_size
        Examples per step; with in-batch negatives, a batch's other positives are its negatives.
    learning_rate
        Adam step size.
    history_length
        How many of the user's most recent items the behaviour-sequence feature averages.
    temperature
        Cosine scores are divided by it in the softmax; small values sharpen it.
    l2
        L2 penalty on the embedding tables (0 disables it).
    exclude_purchased
        Drop items the user already bought from their slates (they go last if k needs them).
    early_stopping_patience
        Epochs without a better validation recall before training stops (best weights return).
    validation_fraction
        Share of eligible users whose last new item is held out to steer early stopping
        (with ``validation_holdout: random``, share of the distinct user-item pairs held
        out); 0 trains for `epochs` without validation.
    validation_holdout
        ``last``: each chosen user's last new item (next-item prediction). ``random``: a
        seeded random share of the (user, item) pairs, as in a random offline split.
        ``time``: the latest `validation_fraction` of the interactions by time (a global
        cut, as in a temporal offline split), scored by the share of held-out pairs found;
        users first seen after the cut are served from their profile alone.
    purchase_weight
        Loss weight of a purchased item's example (a click has weight 1).
    cold_start_dropout
        Probability that a training example hides both the user id and the history, so the
        tower learns to serve a user known only by their profile (or nothing: popularity
        through the item bias).
    item_bias
        Add a learned per-item logit offset (started at the log of the item's frequency) to
        the cosine score: popularity need not be carved out of the unit-norm embeddings.
        Served as one more embedding component (a 1 in known users' queries).
    negatives
        ``in_batch``: the softmax runs over the batch's positives, logQ-corrected (scales to
        any catalogue). ``full``: over the whole catalogue, every item embedded each step
        (exact, no sampling bias, so no logQ; for catalogues up to tens of thousands).
    refit
        After early stopping on a validation holdout, train again from the start on the
        whole history (held-out part included) for the best epoch count; costs a second fit.
    cold_popularity_weight
        Weight of the popularity axis in the stored queries of users known only by their
        profile (no clicks or purchases): their score is the model's plus this times the
        item's popularity rank in (0, 1]. 0 serves them the model alone.
    example_history
        What a training example's history feature holds. ``before``: the user's
        `history_length` steps before the example's item (next-item prediction). ``others``:
        the user's latest `history_length` steps other than the example's item, before or
        after it: the same latest items a served query reads, so the tower learns a user
        from the bag of their items (as a random offline split sees them).
    history_dropout
        Probability that a training example's history item is hidden (each one on its own),
        so the tower learns to embed users from part of their items (denoising).
    history_embeddings
        ``shared``: the behaviour sequence reads the candidate tower's item id embeddings.
        ``own``: it has its own id table (one more items x `embedding_dim` table, stored in
        the artifact instead of the candidate one), so an item as evidence about a user and
        an item as a recommendation are free to differ.
    user_id_dropout
        Probability that a training example hides its user id (out-of-vocabulary row), so the
        tower learns to serve unseen users from their history alone.
    """

    embedding_dim: int = Field(default=128, ge=2, le=1024)
    hidden_units: tuple[HiddenUnits, ...] = Field(default=(128,), max_length=8)
    epochs: int = Field(default=30, ge=1, le=1000)
    batch_size: int = Field(default=512, ge=2, le=1_000_000)
    learning_rate: float = Field(default=0.003, gt=0.0, le=10.0, allow_inf_nan=False)
    history_length: int = Field(default=50, ge=0, le=1000)
    temperature: float = Field(default=0.1, gt=0.0, le=100.0, allow_inf_nan=False)
    l2: float = Field(default=1e-5, ge=0.0, le=10.0, allow_inf_nan=False)
    exclude_purchased: bool = True
    early_stopping_patience: int = Field(default=3, ge=0, le=1000)
    validation_fraction: float = Field(default=0.1, ge=0.0, lt=1.0, allow_inf_nan=False)
    purchase_weight: float = Field(default=5.0, gt=0.0, le=1000.0, allow_inf_nan=False)
    user_id_dropout: float = Field(default=0.2, ge=0.0, lt=1.0, allow_inf_nan=False)
    item_bias: bool = True
    cold_start_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, allow_inf_nan=False)
    negatives: Literal["in_batch", "full"] = "full"
    validation_holdout: Literal["last", "random", "time"] = "random"
    refit: bool = True
    cold_popularity_weight: float = Field(default=0.0, ge=0.0, le=4.0, allow_inf_nan=False)
    example_history: Literal["before", "others"] = "others"
    history_dropout: float = Field(default=0.5, ge=0.0, lt=1.0, allow_inf_nan=False)
    history_embeddings: Literal["shared", "own"] = "own"
    embedding_dtype: EmbeddingDtype = "float32"
