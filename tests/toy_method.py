"""A method module made at run time from source text and registered under a name, for the tests
showing that a method defined outside the package gets every hook in an experiment kind."""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager


@contextmanager
def registered(registry, name: str, source: str):
    """Yield `name` while `source`, as module toy_<name>_method, is registered in `registry`."""
    module_name = f"toy_{name}_method"
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module  # before exec: dataclass looks its module up
    try:
        exec(compile(source, module_name, "exec"), module.__dict__)
        registry.register(name, module_name)
        yield name
    finally:
        registry.unregister(name)
        sys.modules.pop(module_name, None)
