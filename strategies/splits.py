"""How offline evaluation divides a history into training data and held-out interactions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from abplatform.domain import InteractionLog
from abplatform.errors import AbplatformError
from strategies.evaluation import POSITIVE_EVENTS, new_item_rows, subset_log


@dataclass(frozen=True)
class SplitParts:
    """A divided history: the training log, the held-out log and how the split went."""

    train: InteractionLog
    test: InteractionLog
    parameters: dict[str, Any]
    """The split's kind and settings as written to JSON (e.g. a time split's cut-off)."""
    description: str
    """The same for people, e.g. ``random 0.2 of user-item pairs (seed 42)``."""
    seen_events: tuple[str, ...] | None = None
    """Interaction types that make a training item seen by its user (None: every type)."""

    def to_dict(self) -> dict[str, Any]:
        """The parameters, then the training and held-out interaction counts."""
        return {
            **self.parameters,
            "train_interactions": len(self.train),
            "test_interactions": len(self.test),
        }


class Split(Protocol):
    """A way to hold out interactions; `divide` checks the history and explains a failure."""

    kind: ClassVar[str]

    def divide(self, history: InteractionLog, catalog: str) -> SplitParts:
        """Training and held-out parts of the catalogue's history."""
        ...


def _check_fraction(fraction: float, history: InteractionLog, catalog: str) -> None:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1) (got {fraction!r})")
    if len(history) < 2:
        raise AbplatformError(
            f"catalogue {catalog!r} has {len(history)} interaction(s): too few to split",
            hint="ingest --interactions first, or pass --test FILE",
        )


def _by_mask(
    history: InteractionLog, held: npt.NDArray[np.bool_], parameters: dict[str, Any], label: str
) -> SplitParts:
    if held.all() or not held.any():
        kind = parameters["kind"]
        raise AbplatformError(
            f"the {kind} split of {len(history)} interactions leaves "
            f"{'no training' if held.all() else 'no held-out'} data",
            hint="change --test-fraction (a time split needs more than one distinct timestamp)",
        )
    return SplitParts(subset_log(history, ~held), subset_log(history, held), parameters, label)


def _whole_history_trains(history: InteractionLog, catalog: str) -> None:
    if len(history) == 0:
        raise AbplatformError(
            f"catalogue {catalog!r} has no interaction history to train on",
            hint="simulate the experiment or ingest --interactions first",
        )


@dataclass(frozen=True)
class RandomSplit:
    """Hold out a random share of the distinct (user, item) pairs, each with all its rows.

    Splitting pairs rather than rows keeps a user's repeated interactions with one item on
    one side, so a held-out item is never also a training item of that user.
    """

    test_fraction: float = 0.2
    seed: int = 42
    kind: ClassVar[str] = "random"

    def divide(self, history: InteractionLog, catalog: str) -> SplitParts:
        """A seeded random `test_fraction` of the pairs is held out."""
        _check_fraction(self.test_fraction, history, catalog)
        _, user_codes = np.unique(history.user_ids, return_inverse=True)
        items, item_codes = np.unique(history.item_ids, return_inverse=True)
        keys = user_codes.astype(np.int64) * len(items) + item_codes
        pairs, pair_of_row = np.unique(keys, return_inverse=True)
        chosen = np.zeros(len(pairs), dtype=bool)
        order = np.random.default_rng(self.seed).permutation(len(pairs))
        chosen[order[: round(self.test_fraction * len(pairs))]] = True
        parameters = {"kind": self.kind, "test_fraction": self.test_fraction, "seed": self.seed}
        label = f"random {self.test_fraction} of user-item pairs (seed {self.seed})"
        return _by_mask(history, chosen[pair_of_row.reshape(-1)], parameters, label)


@dataclass(frozen=True)
class TimeSplit:
    """Hold out the latest `test_fraction` of the interactions (one global cut-off time).

    Rows at the cut-off second are all held out, so the held-out share may exceed the
    fraction slightly. Users first seen after the cut-off are cold users.
    """

    test_fraction: float = 0.2
    kind: ClassVar[str] = "time"

    def divide(self, history: InteractionLog, catalog: str) -> SplitParts:
        """Rows at or after the time that leaves `test_fraction` of them after it."""
        _check_fraction(self.test_fraction, history, catalog)
        ordered = np.sort(history.timestamps)
        cutoff = int(ordered[len(ordered) - max(round(self.test_fraction * len(ordered)), 1)])
        when = str(np.datetime64(cutoff, "s")) + "Z"
        parameters = {"kind": self.kind, "test_fraction": self.test_fraction, "cutoff": when}
        held: npt.NDArray[np.bool_] = history.timestamps >= cutoff
        return _by_mask(history, held, parameters, f"interactions from {when} on")


@dataclass(frozen=True)
class NewItemsSplit:
    """Hold out each user's latest `per_user` new items (`time_split`; the `train` split).

    A held-out item is new among the user's clicks and purchases, so only those make a
    training item seen: an item the user merely viewed before stays a candidate.
    """

    per_user: int = 1
    kind: ClassVar[str] = "new_items"

    def divide(self, history: InteractionLog, catalog: str) -> SplitParts:
        """Training rows before each test user's cut-off; the first row of each held-out pair."""
        _whole_history_trains(history, catalog)
        keep, rows = new_item_rows(history, self.per_user)
        if rows.size == 0 and not np.isin(history.event_types, POSITIVE_EVENTS).any():
            found = ", ".join(sorted(set(history.event_types.tolist())))
            raise AbplatformError(
                f"catalogue {catalog!r} has no {' or '.join(POSITIVE_EVENTS)} interactions to "
                f"train on (its history has only: {found})",
                hint="the strategies learn from clicks and purchases: ingest the interactions "
                "that mean interest (e.g. ratings of 4 and more) with type click",
            )
        if rows.size == 0:
            raise AbplatformError(
                f"no user of catalogue {catalog!r} has enough history to hold out "
                f"{self.per_user} item(s) and keep one for training",
                hint="train on a longer history or a lower --holdout",
            )
        held = np.zeros(len(history), dtype=bool)
        held[rows] = True
        return SplitParts(
            subset_log(history, keep),
            subset_log(history, held),
            {"kind": self.kind, "per_user": self.per_user},
            f"each user's latest {self.per_user} new item(s)",
            POSITIVE_EVENTS,
        )


@dataclass(frozen=True)
class TestFile:
    """Held-out interactions in a CSV of the `ingest --interactions` format; the whole
    stored history is the training data."""

    path: Path
    kind: ClassVar[str] = "file"

    def divide(self, history: InteractionLog, catalog: str) -> SplitParts:
        """The whole history trains; the file's rows (checked like `ingest`) are held out."""
        from abplatform.catalog_ingest import read_interactions

        _whole_history_trains(history, catalog)
        rows = read_interactions(
            self.path, history.catalog.item_ids.tolist(), f"catalogue {catalog!r}"
        )
        test = InteractionLog(
            catalog=history.catalog,
            user_ids=rows.user_ids,
            item_ids=rows.item_ids,
            event_types=rows.types,
            values=rows.values,
            timestamps=rows.timestamps,
            user_features=history.user_features,
        )
        parameters = {"kind": self.kind, "test_file": str(self.path)}
        return SplitParts(history, test, parameters, f"held-out file {self.path}")


@dataclass(frozen=True)
class HeldOutLog:
    """Held-out interactions already in memory; the whole history is the training data."""

    log: InteractionLog = field(repr=False)
    name: str = "held-out log"
    kind: ClassVar[str] = "log"

    def divide(self, history: InteractionLog, catalog: str) -> SplitParts:
        """The whole history trains; `log` is held out."""
        _whole_history_trains(history, catalog)
        parameters = {"kind": self.kind, "test_log": self.name}
        return SplitParts(history, self.log, parameters, f"held-out log {self.name}")


def split_history(
    history: InteractionLog, split: Split, catalog: str = "the catalogue"
) -> SplitParts:
    """`split.divide(history, catalog)`: the training and held-out parts of `history`."""
    return split.divide(history, catalog)
