"""Building the journey as calls finish: one record per layer and input signature, or one
per call with ``every_call``.

A call recorded op by op adds its record (or, at a signature already in the journey, its
count and any failed check). A call that ran without the recorder counts towards its
signature's record; the first such call in a trace copies the record learned earlier, keeping
only the checks that follow from the signature (the softmax axis, heads x head_dim, the
scale): checks of values (row sums, finiteness) hold for the calls they looked at only.
"""

from __future__ import annotations

from collections.abc import Hashable

from shapetrace.journey import Journey, LayerRecord
from shapetrace.stages import Check

__all__ = ["VALUE_CHECKS", "Journal"]

#: Checks that read values, not shapes: they say nothing of calls they did not look at.
VALUE_CHECKS = frozenset({"rows_sum_to_one", "finite", "finite_input"})

Key = Hashable  # what identifies a layer at one signature: its Learned entry's id


def _merge(record: LayerRecord, checks: list[Check], call: int) -> None:
    """Keep the first failure of each check across the calls looked at."""
    have = {c.name: i for i, c in enumerate(record.checks)}
    for check in checks:
        at = have.get(check.name)
        if at is None:
            record.checks.append(check)
        elif record.checks[at].ok and not check.ok:
            record.checks[at] = Check(check.name, False, f"call {call}: {check.detail}")


class Journal:
    """The records of one trace, by (layer path, signature)."""

    def __init__(self, journey: Journey, *, every_call: bool) -> None:
        self.journey = journey
        self.every_call = every_call
        self._records: dict[Key, LayerRecord] = {}
        self.touched: list[LayerRecord] | None = None  # records a compiled call's shadow made
        self._shape_checks: dict[int, list[Check]] = {}

    def get(self, key: Key) -> LayerRecord | None:
        return self._records.get(key)

    def recorded(self, key: Key, record: LayerRecord) -> LayerRecord:
        """A call recorded and checked op by op; the record it counts towards."""
        existing = None if self.every_call else self._records.get(key)
        if existing is None:
            record.calls, record.checked = 1, 1
            self.journey.layers.append(record)
            self._records[key] = record
            return self._touch(record)
        existing.calls += 1
        existing.checked += 1
        _merge(existing, record.checks, record.call)
        return self._touch(existing)

    def _touch(self, record: LayerRecord) -> LayerRecord:
        if self.touched is not None:
            self.touched.append(record)
        return record

    def repeated(self, key: Key, learned: LayerRecord, call: int) -> LayerRecord:
        """A call of a signature learned earlier that ran without the recorder."""
        existing = self._records.get(key)
        if existing is not None:
            existing.calls += 1
            return self._touch(existing)
        copy = object.__new__(LayerRecord)  # a shallow copy, without copy.copy's overhead
        copy.__dict__.update(learned.__dict__)
        copy.call, copy.calls, copy.checked = call, 1, 0
        shape_checks = self._shape_checks.get(id(learned))
        if shape_checks is None:
            shape_checks = [c for c in learned.checks if c.name not in VALUE_CHECKS]
            self._shape_checks[id(learned)] = shape_checks
        copy.checks = list(shape_checks)
        self.journey.layers.append(copy)
        self._records[key] = copy
        return self._touch(copy)
