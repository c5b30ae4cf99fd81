"""The `abplatform` command line: a thin layer over the platform's verbs.

Each module of this package adds the commands of one concern to the one Typer app of
`abplatform.cli.base`; importing the package registers them all.
"""

from __future__ import annotations

import sys

from abplatform.cli import admin, experiments, models, offline, statistics
from abplatform.cli.base import app

__all__ = ["admin", "app", "experiments", "main", "models", "offline", "statistics"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        print(
            "interrupted; nothing was half-written (each command is one transaction)",
            file=sys.stderr,
        )
        sys.exit(130)
