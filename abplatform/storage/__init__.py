"""Persistence: SQLAlchemy models, engines and sessions, repositories, bulk writers."""
