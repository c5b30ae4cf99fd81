"""What one variant's users did in a simulated run: the counts the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VariantTally:
    """Counts of what one variant's users did in the run."""

    units: int = 0
    exposures: int = 0
    impressions: int = 0
    clicks: int = 0
    purchases: int = 0
    revenue: float = 0.0
