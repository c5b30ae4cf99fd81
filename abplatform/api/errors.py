"""Error responses: platform errors become JSON problems, never a 500 for a bad request."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from abplatform.api.responses import FastJSON
from abplatform.api.schemas import Problem, ValidationProblem
from abplatform.config.loader import ConfigError
from abplatform.errors import AbplatformError, NotFoundError
from abplatform.writer import WriteFailed, WriterClosed, WriterFull

RETRY_AFTER_SECONDS = "1"


class NotRunning(AbplatformError):
    """Assignment asked of an experiment that is not running."""

    def __init__(self, key: str, status: str) -> None:
        super().__init__(
            f"experiment {key!r} is {status}, only running experiments assign",
            hint=f"start it: POST /v1/experiments/{key}/start",
        )


_DESCRIPTIONS = {
    404: "No such experiment",
    409: "The experiment is not in a state that allows this",
    413: "Request body too large",
    422: "Invalid request (the problem names the field)",
    503: "Write queue full or shutting down; retry after `Retry-After` seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route may answer."""
    return {
        code: {
            "model": ValidationProblem if code == 422 else Problem,
            "description": _DESCRIPTIONS[code],
        }
        for code in codes
    }


def _problem(status: int, exc: AbplatformError, **extra: Any) -> FastJSON:
    body = {"detail": exc.message, "hint": exc.hint, "problems": extra.pop("problems", [])}
    return FastJSON(body, status_code=status, **extra)


async def _config_error(_: Request, exc: Exception) -> FastJSON:
    assert isinstance(exc, ConfigError)
    return _problem(422, exc, problems=exc.lines())


async def _not_found(_: Request, exc: Exception) -> FastJSON:
    assert isinstance(exc, NotFoundError)
    return _problem(404, exc)


async def _conflict(_: Request, exc: Exception) -> FastJSON:
    assert isinstance(exc, AbplatformError)
    return _problem(409, exc)


async def _busy(_: Request, exc: Exception) -> FastJSON:
    return FastJSON(
        {"detail": f"{exc}; nothing of this request was recorded, retry", "problems": []},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def _invalid(_: Request, exc: Exception) -> FastJSON:
    # Only type, location and message: echoing inputs would return NaN (not JSON) or whole
    # oversized batches.
    assert isinstance(exc, RequestValidationError)
    detail = [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    return FastJSON({"detail": detail}, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    """Map platform errors to statuses (most specific first)."""
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(ConfigError, _config_error)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(AbplatformError, _conflict)
    app.add_exception_handler(WriterFull, _busy)
    app.add_exception_handler(WriterClosed, _busy)
    app.add_exception_handler(WriteFailed, _busy)
