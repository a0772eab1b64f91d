"""Name -> lazily imported implementation, as in RLlib's algorithm registry.

An entry is a dotted module path ("fedunlearn.unlearn.sisa") or a module path and an attribute
("fedunlearn.data.datasets:load_digits"); it is imported only when the name is used, so
`fedunlearn list` and config validation stay fast and a broken optional dependency of one
entry cannot break the others.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedunlearn.errors import ConfigError, unknown_choice


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def register(self, name: str, target: str) -> None:
        """Add (or replace) an entry at run time, e.g. a method defined outside the package."""
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def check(self, name: str) -> str:
        if name not in self._entries:
            raise unknown_choice(self.kind, name, self._entries)
        return name

    def module_name(self, name: str) -> str:
        return self._entries[self.check(name)].partition(":")[0]

    def get(self, name: str) -> Any:
        module, _, attr = self._entries[self.check(name)].partition(":")
        loaded = importlib.import_module(module)
        return getattr(loaded, attr) if attr else loaded

    def load(self, name: str) -> Any:
        """As `get`, but an entry that cannot be imported is a one-line ConfigError."""
        try:
            return self.get(name)
        except ImportError as err:
            raise ConfigError(f"{self.kind} '{name}' is registered but cannot be imported ({err}); "
                              "remove it from the config or install what it needs") from None

    def describe(self, name: str) -> str:
        """First line of the implementing module's (or function's) docstring."""
        doc = (self.get(name).__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""
