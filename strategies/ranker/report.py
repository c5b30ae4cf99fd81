"""What `abplatform train` reports of each ranker it trained: offline quality per head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from abplatform.strategy import Strategy
from strategies.base import BaseStrategy
from strategies.ranker.metrics import HeadQuality, finite_or_none

MODELS = ("ranker", "logistic", "lightgbm")
HEADS = ("click", "purchase")


@dataclass(frozen=True)
class RankerQuality:
    """A variant's ranker on its time-ordered holdout, beside a logistic regression on the
    same features; the purchase head is p(purchase | click), scored on clicked rows."""

    variant: str
    fallback: str | None
    impressions: int
    holdout_rows: int
    heads: dict[str, dict[str, HeadQuality]]
    """{model: {head: quality}} for model in `MODELS`, head in `HEADS` (empty on fallback;
    no "lightgbm" when it is not installed)."""

    def peers_ahead(self) -> list[tuple[str, str, float, float]]:
        """(peer, head, its AUC, the ranker's AUC) wherever a peer's holdout AUC is higher."""
        ours = self.heads.get("ranker", {})
        out = []
        for model, heads in self.heads.items():
            for head, quality in heads.items():
                if model != "ranker" and head in ours and quality.auc > ours[head].auc:
                    out.append((model, head, quality.auc, ours[head].auc))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "fallback": self.fallback,
            "impressions": self.impressions,
            "holdout_rows": self.holdout_rows,
            "heads": {
                m: {h: finite_or_none(q) for h, q in hs.items()} for m, hs in self.heads.items()
            },
        }


def ranker_quality(variant: str, strategy: Strategy) -> list[RankerQuality]:
    """The quality of every ranker `strategy` is or nests (at any depth)."""
    from strategies.ranker.strategy import RankerStrategy

    out: list[RankerQuality] = []
    pending = [strategy]
    while pending:
        current = pending.pop()
        if isinstance(current, RankerStrategy):
            training = current.artifact.manifest["training"]
            out.append(
                RankerQuality(
                    variant,
                    training.get("fallback"),
                    int(training.get("impressions", 0)),
                    int(training.get("holdout_rows", 0)),
                    dict(current.quality) or _stored_quality(training),
                )
            )
        elif isinstance(current, BaseStrategy):
            pending.extend(current.fitted_stages().values())
    return out


def _stored_quality(training: dict[str, Any]) -> dict[str, dict[str, HeadQuality]]:
    """The quality a loaded ranker's manifest kept (null metrics back to NaN)."""
    nan = float("nan")
    return {
        model: {
            head: HeadQuality(
                int(q["rows"]),
                int(q["positives"]),
                *(nan if q[n] is None else float(q[n]) for n in ("auc", "log_loss", "ece")),
            )
            for head, q in heads.items()
        }
        for model, heads in (training.get("quality") or {}).items()
    }
