"""Errors that point at the exact input that caused them.

Every stage reads records (a trajectory, a corpus line, a pair) from files. When a record is bad,
the user needs three things to fix it: the file, the record's position in it and the field. A
:class:`RecordError` carries all three plus a short machine-readable ``reason`` that lenient runs use
as the key under which they count skipped records (``report.json`` -> ``records_skipped``).
"""

from __future__ import annotations


class LratError(Exception):
    """Base class of the errors this package raises on purpose (bad input, bad configuration)."""


class RecordError(LratError):
    """A record that cannot be used.

    Args:
        reason: short snake_case key, e.g. ``invalid_json``, ``missing_field``, ``wrong_type``,
            ``unknown_step_kind``, ``empty_trajectory``, ``unknown_format``.
        message: what is wrong, for a person.
        source: the file (any pyarrow-filesystem URI) the record came from.
        record: where in the file: ``"line 12"`` for JSONL, ``"row 3"`` for Parquet,
            ``"item 2"`` for a JSON list, ``None`` when the file is one record.
        field: dotted path of the offending field, e.g. ``result[4].arguments``.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        source: str | None = None,
        record: str | None = None,
        field: str | None = None,
    ):
        self.reason = reason
        self.message = message
        self.source = source
        self.record = record
        self.field = field
        super().__init__(self._render())

    def located(self, source: str, record: str | None) -> RecordError:
        """The same error with the file and record position filled in (adapters do not know them)."""
        return RecordError(self.reason, self.message, source=source, record=record, field=self.field)

    def _render(self) -> str:
        where = ":".join(p for p in (self.source, self.record) if p)
        field = f" field '{self.field}'" if self.field else ""
        prefix = f"{where}:" if where else ""
        return f"{prefix}{field} {self.message} [{self.reason}]".strip()
