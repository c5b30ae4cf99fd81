"""A source scan for statements that insert into, update or delete from given tables."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("abplatform", "strategies", "simulator", "reports", "bench")
# The schema (models) and its migrations declare the tables; they write no rows.
EXEMPT = {ROOT / "abplatform" / "storage" / "models.py"}
_VERBS = r"(insert|update|delete)"


@dataclass(frozen=True)
class TableWrites:
    """The write statements of some tables, known by table name and ORM model name."""

    tables: Sequence[str]
    models: Sequence[str]

    def _names(self) -> tuple[str, str]:
        return "(" + "|".join(self.tables) + ")", "(" + "|".join(self.models) + ")"

    def patterns(self) -> list[re.Pattern[str]]:
        """The statement shapes looked for in every file."""
        tables, models = self._names()
        return [
            # Raw SQL: INSERT INTO / COPY / UPDATE ... SET / DELETE FROM, quoted or not.
            re.compile(
                rf"\b(INSERT\s+(OR\s+\w+\s+)?INTO|COPY|DELETE\s+FROM)\s+\"?{tables}\b"
                rf"|\bUPDATE\s+\"?{tables}\"?\s+SET\b",
                re.IGNORECASE,
            ),
            # The set-based writers of `storage.bulk` given one of the tables by name.
            re.compile(rf"\b(bulk_insert|insert_rows)\(\s*[\w.]+,\s*[\"']{tables}[\"']"),
            # SQLAlchemy statements and ORM objects of the models.
            re.compile(rf"\b{_VERBS}\(\s*(m\.|models\.)?{models}\b"),
            re.compile(rf"\b{models}\.__table__\.{_VERBS}\("),
            re.compile(rf"\btables\[[\"']{tables}[\"']\]\.{_VERBS}\("),
            re.compile(rf"(?<![\w.])(m\.|models\.)?{models}\("),
        ]

    def _handles(self, text: str) -> list[str]:
        """Names a file binds to one of the tables (`X = m.Model.__table__`, metadata lookups)."""
        tables, models = self._names()
        handle = re.compile(
            rf"^\s*(\w+)(\s*:\s*[\w.]+)?\s*=\s*(m\.|models\.)?"
            rf"({models}\.__table__|(\w+\.)*tables\[[\"']{tables}[\"']\])",
            re.MULTILINE,
        )
        return [match.group(1) for match in handle.finditer(text)]

    def find(self, text: str) -> list[str]:
        """Every write statement of the tables in a source text."""
        found = [match.group(0) for pattern in self.patterns() for match in pattern.finditer(text)]
        for name in self._handles(text):
            used = re.compile(rf"\b{name}\.{_VERBS}\(|\b{_VERBS}\(\s*{name}\b")
            found += [match.group(0) for match in used.finditer(text)]
        return found

    def outside(self, owners: Sequence[Path]) -> list[str]:
        """`path: statement` of every write in the scanned folders outside the owners."""
        found = []
        for folder in SCANNED:
            for path in sorted((ROOT / folder).rglob("*.py")):
                if path in owners or path in EXEMPT:
                    continue
                hits = self.find(path.read_text(encoding="utf-8"))
                found += [f"{path.relative_to(ROOT)}: {hit}" for hit in hits]
        return found
