"""Analysis layer: statistics and report rendering for experiments."""
