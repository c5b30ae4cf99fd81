"""Assignment of units to variants: GrowthBook-compatible hashing and adaptive policies."""
