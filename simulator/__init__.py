"""A synthetic e-commerce world that plays experiments end to end into SQL."""
