"""Error responses: platform errors become JSON problems, never a 500 for a bad request."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from abplatform.api.responses import FastJSON
from abplatform.api.schemas import Problem, ValidationProblem
from abplatform.errors import (
    AbplatformError,
    ConfigError,
    DatabaseUnavailable,
    NotFoundError,
    WriteFailed,
    WriterClosed,
    WriterFull,
)
from abplatform.storage.db import is_unavailable

RETRY_AFTER_SECONDS = "1"

log = logging.getLogger(__name__)


class NotRunning(AbplatformError):
    """Assignment asked of an experiment that is not running."""

    def __init__(self, key: str, status: str) -> None:
        super().__init__(
            f"experiment {key!r} is {status}, only running experiments assign",
            hint=f"start it: POST /v1/experiments/{key}/start",
        )


class Unservable(AbplatformError):
    """Assignment asked of a running experiment whose strategies cannot be fitted or loaded."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(
            f"experiment {key!r} is running but cannot be served: {reason}",
            hint=f"fix its catalogue or config (GET /v1/experiments/{key}), or stop it: "
            f"POST /v1/experiments/{key}/stop; every other experiment is served",
        )
        self.reason = reason


_DESCRIPTIONS = {
    404: "No such experiment (or model)",
    409: "The experiment (or model) is not in a state that allows this (or cannot be served)",
    413: "Request body too large",
    422: "Invalid request (the problem names the field)",
    503: (
        "Write queue full, shutting down, database unreachable or analysis over its time "
        "bound; retry after `Retry-After` seconds"
    ),
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


def _config_error(exc: Exception) -> FastJSON:
    assert isinstance(exc, ConfigError)
    return _problem(422, exc, problems=exc.problems)


def _not_found(exc: Exception) -> FastJSON:
    assert isinstance(exc, NotFoundError)
    return _problem(404, exc)


def _conflict(exc: Exception) -> FastJSON:
    assert isinstance(exc, AbplatformError)
    return _problem(409, exc)


def _busy(exc: Exception) -> FastJSON:
    return FastJSON(
        {"detail": f"{exc}; nothing of this request was recorded, retry", "problems": []},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def _database(exc: Exception) -> FastJSON | None:
    """503 for a database that cannot be reached (or a pool with no connection to give)."""
    if isinstance(exc, PoolTimeout) or (isinstance(exc, DBAPIError) and is_unavailable(exc)):
        reason = type(getattr(exc, "orig", None) or exc).__name__
        return _busy(DatabaseUnavailable(f"the database is unreachable ({reason})"))
    return None


def server_error(exc: BaseException) -> FastJSON:
    """The JSON 500 of an unexpected error (logged with its traceback, never sent)."""
    log.error("unexpected error answering a request", exc_info=exc)
    return FastJSON(
        {"detail": "internal server error; the server log has the details", "problems": []},
        status_code=500,
    )


def _http(exc: Exception) -> FastJSON:
    assert isinstance(exc, HTTPException)
    return FastJSON({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def validation_problem(errors: Sequence[Any], prefix: tuple[str, ...] = ()) -> FastJSON:
    """422 listing {type, loc, msg} per bad field.

    Only type, location and message: echoing inputs would return NaN (not JSON) or whole
    oversized batches.
    """
    detail = [{"type": e["type"], "loc": [*prefix, *e["loc"]], "msg": e["msg"]} for e in errors]
    return FastJSON({"detail": detail}, status_code=422)


async def _invalid(_: Request, exc: Exception) -> FastJSON:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(exc.errors())


# Most specific first: ConfigError, NotFoundError and the writer's refusals are
# AbplatformErrors too.
_PROBLEMS: tuple[tuple[type[Exception], Callable[[Exception], FastJSON]], ...] = (
    (ConfigError, _config_error),
    (NotFoundError, _not_found),
    (WriterFull, _busy),
    (WriterClosed, _busy),
    (WriteFailed, _busy),
    (DatabaseUnavailable, _busy),
    (AbplatformError, _conflict),
    (HTTPException, _http),
)


def problem_response(exc: Exception) -> FastJSON | None:
    """The error response of a platform or database-outage error (None: a server error)."""
    for kind, render in _PROBLEMS:
        if isinstance(exc, kind):
            return render(exc)
    return _database(exc)


async def _unexpected(_: Request, exc: Exception) -> FastJSON:
    return _database(exc) or server_error(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Map platform errors to statuses (the same mapping as `problem_response`); a database
    outage is a 503, any other database error a JSON 500 (the fast lane catches the rest)."""
    app.add_exception_handler(RequestValidationError, _invalid)
    for kind, render in _PROBLEMS[:-1]:  # HTTPException keeps FastAPI's own handler

        async def handle(_: Request, exc: Exception, render: Any = render) -> FastJSON:
            return render(exc)  # type: ignore[no-any-return]

        app.add_exception_handler(kind, handle)
    for kind in (DBAPIError, PoolTimeout):
        app.add_exception_handler(kind, _unexpected)
