"""The command line's logging: fedunlearn's own progress lines, once each, without library chatter.

The root logger stays at WARNING so libraries' INFO lines (alembic's "setup plugin ...", which
Ray's dependencies log on import) stay out. Flower logs through its own console handler; it
also propagated to the root handler, which printed every Flower line twice, so it no longer
propagates. Flower's notice that `run_simulation` is deprecated is about the call fedunlearn
makes, not something a user can act on, so it is dropped.
"""

from __future__ import annotations

import logging
import warnings


class _DropDeprecatedSimulation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


def configure() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fedunlearn").setLevel(logging.INFO)
    flwr = logging.getLogger("flwr")
    flwr.propagate = False
    flwr.addFilter(_DropDeprecatedSimulation())  # a logger's filter sees every record logged on it
    # Ray's notice about a future default for GPU-less tasks: nothing to act on here.
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)

