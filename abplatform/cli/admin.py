"""Commands that run and administer a deployment: db upgrade/current, serve, keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import uvicorn

from abplatform.cli.base import (
    DbOption,
    app,
    db_app,
    fail,
    keys_app,
    make_console,
    open_db,
    run_verb,
)


@db_app.command("upgrade")
def db_upgrade(
    db: DbOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Run the schema migrations (Alembic) up to head."""
    from abplatform.storage.db import current_revision, make_engine, resolve_url, upgrade

    engine = run_verb(lambda: make_engine(db))
    run_verb(lambda: upgrade(engine, revision))
    print(f"{resolve_url(db)}: at revision {current_revision(engine)}")


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Print the schema revision the database is at."""
    from abplatform.storage.db import current_revision, make_engine

    engine = run_verb(lambda: make_engine(db))
    print(run_verb(lambda: current_revision(engine)) or "empty (no migrations applied)")


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Worker processes (default: the CPU count).",
        ),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Serve without API keys (development only).")
    ] = False,
) -> None:
    """Serve the assignment API with uvicorn (SIGTERM: stop accepting, flush, exit)."""
    import os

    import uvicorn

    from abplatform.storage.db import URL_ENV, resolve_url

    # One BLAS thread per process (read when NumPy loads, so before `open_db` imports it):
    # the workers already share the cores, and multithreaded BLAS on a busy machine makes
    # a 16-row top-k several times slower.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    # The workers accept from one shared socket; libuv (uvloop) otherwise accepts every
    # pending connection at once, so one worker took most of 8 connections (100% vs 16%
    # CPU). One accept per turn spreads them.
    os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
    engine = open_db(db)  # migrate SQLite / fail early on an un-migrated PostgreSQL
    engine.dispose()
    os.environ[URL_ENV] = resolve_url(db)
    os.environ["ABPLATFORM_API_AUTH"] = "false" if no_auth else "true"
    if no_auth:
        make_console(stderr=True).print(
            "[bold yellow]warning:[/] --no-auth: every client may assign, read and administer; "
            "never expose this server beyond a development machine",
            markup=True,
        )
    config = uvicorn.Config(
        "abplatform.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        # One process per core: requests never wait on the database (writes are batched by
        # each process' writer thread), so the processes share the CPU, not a lock.
        workers=workers or os.cpu_count() or 1,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    if not _run_server(config):
        make_console(stderr=True).print(
            "[bold red]error:[/] the server failed to start (see the log above)", markup=True
        )
        raise typer.Exit(STARTUP_FAILURE)


STARTUP_FAILURE = 3  # uvicorn's own exit status for a worker that could not start


def _run_server(config: uvicorn.Config) -> bool:
    """Run uvicorn until it stops; False if it (or any worker) failed to start.

    `uvicorn.run` with several workers returns normally (exit 0) when a worker's start-up
    fails and the supervisor gives up, so a supervisor would see a clean exit.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    if config.workers == 1:
        server = uvicorn.Server(config)
        try:
            server.run()
        except SystemExit as exc:  # uvicorn's own exit when the app's start-up fails
            if exc.code != STARTUP_FAILURE:
                raise
        return server.started
    from abplatform.api.preload import use_forked_workers

    use_forked_workers()  # the app imported once here; each worker only starts it
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    return not any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)


@keys_app.command("create")
def keys_create(
    scope: Annotated[
        list[str], typer.Option("--scope", help="assign, read or admin (repeatable).")
    ],
    name: Annotated[str, typer.Option(help="Who uses the key, e.g. web.")],
    db: DbOption = None,
) -> None:
    """Create a key and print it once (only a salted hash is stored)."""
    from abplatform.keys import create_key
    from abplatform.storage.db import transaction

    engine = open_db(db)
    with transaction(engine) as session:
        new = run_verb(lambda: create_key(session, name, scope))
    make_console(stderr=True).print(
        f"created key {new.key_id} ({new.name}: {' '.join(new.scopes)}); "
        "store it now, it cannot be shown again",
        markup=False,
    )
    print(new.plain)


@keys_app.command("list")
def keys_list(db: DbOption = None) -> None:
    """List keys (id, name, scopes, created, revoked), never their secrets."""
    from abplatform.keys import list_keys
    from abplatform.storage.db import transaction

    with transaction(open_db(db)) as session:
        for row in list_keys(session):
            revoked = row.revoked_at.isoformat() if row.revoked_at else "-"
            print(
                f"{row.key_id}\t{row.name}\t{row.scopes}\t{row.created_at.isoformat()}\t{revoked}"
            )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (second part of abp_ID_SECRET).")],
    db: DbOption = None,
) -> None:
    """Revoke a key (servers forget cached keys within a minute)."""
    from abplatform.keys import revoke_key
    from abplatform.storage.db import transaction

    with transaction(open_db(db)) as session:
        found = revoke_key(session, key_id)
    if not found:
        fail(f"no key {key_id!r}", hint="see `abplatform keys list`")
    print(f"revoked {key_id}")
