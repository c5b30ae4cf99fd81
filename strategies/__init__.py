"""Recommendation strategy plug-ins; each registers itself under its YAML `kind`."""
