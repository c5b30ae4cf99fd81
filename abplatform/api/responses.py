"""A JSON response rendered by orjson (FastAPI's FastJSON is deprecated)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class FastJSON(JSONResponse):
    """JSON rendered with orjson: several times faster than the standard library."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
