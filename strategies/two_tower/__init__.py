"""Two-tower retrieval (TensorFlow Recommenders); importing it does not import TensorFlow."""

from strategies.two_tower.params import TwoTowerParams
from strategies.two_tower.strategy import TwoTowerStrategy

__all__ = ["TwoTowerParams", "TwoTowerStrategy"]
