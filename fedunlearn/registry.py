"""Name -> lazily imported implementation, as in RLlib's algorithm registry.

An entry is a dotted module path; the module is imported only when the name is used, so
`fedunlearn list` and config validation stay fast and a broken optional dependency of one
method cannot break the others.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fedunlearn.errors import unknown_choice


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def check(self, name: str) -> str:
        if name not in self._entries:
            raise unknown_choice(self.kind, name, self._entries)
        return name

    def module_name(self, name: str) -> str:
        return self._entries[self.check(name)]

    def get(self, name: str) -> ModuleType:
        return importlib.import_module(self._entries[self.check(name)])

    def describe(self, name: str) -> str:
        """First line of the implementing module's docstring."""
        doc = (self.get(name).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
