"""The assignment API: FastAPI app, routers and dependencies (a composition root)."""
