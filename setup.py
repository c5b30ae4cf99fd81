"""Packaging hook: the wheel also carries the top-level `alembic/` and `examples/` folders.

Both folders stay where the layout puts them; in the wheel they become the data packages
`abplatform._migrations` and `abplatform._examples`, so an installed abplatform can migrate
a database and simulate its bundled examples without a checkout.
"""

from setuptools import find_namespace_packages, setup

CODE = find_namespace_packages(include=["abplatform*", "strategies*", "simulator*", "reports*"])
DATA = {
    "abplatform._migrations": "alembic",
    "abplatform._migrations.versions": "alembic/versions",
    "abplatform._examples": "examples",
}

setup(
    packages=[*CODE, *DATA],
    package_dir=DATA,
    package_data={
        "reports": ["templates/*.html", "templates/*.css"],
        "abplatform": ["py.typed"],
        "abplatform._migrations": ["script.py.mako"],
        "abplatform._examples": ["*.yaml"],
    },
)
