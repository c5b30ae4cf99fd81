"""abplatform: an experimentation platform for recommendation strategies in e-commerce."""

__version__ = "0.1.0"
