"""The example experiments shipped with abplatform (a checkout's `examples/`, or the wheel's)."""

from __future__ import annotations

from pathlib import Path

from abplatform.errors import UnknownNameError

_PACKAGE = Path(__file__).resolve().parent
# An installed wheel carries them as `abplatform/_examples` (see setup.py).
EXAMPLES_DIR = (
    _PACKAGE / "_examples" if (_PACKAGE / "_examples").is_dir() else _PACKAGE.parent / "examples"
)


def example_names() -> list[str]:
    """The names of the bundled examples, sorted."""
    return sorted(path.stem for path in EXAMPLES_DIR.glob("*.yaml"))


def example_path(name: str) -> Path:
    """The YAML file of the bundled example `name`."""
    path = EXAMPLES_DIR / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        raise UnknownNameError(
            f"no bundled example {name!r}",
            hint=f"choose one of: {', '.join(example_names())}",
        )
    return path
