"""The learned ranker: a click + purchase model trained on logged impressions."""

from strategies.ranker.strategy import RankerStrategy

__all__ = ["RankerStrategy"]
