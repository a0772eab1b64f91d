"""Every round accounted for: a transport wrapper that logs who was asked, who answered, and why not.

`MonitoredTransport` wraps any transport (Flower's grid or the in-process one). For each
`train` call it records the phase, the round, the clients sent to, the clients whose update
was used and, per failed client, the cause (the exception's type and message, or a timeout),
so the report can say how many clients each round used and why the others are missing. With
`timeout_s` > 0 an in-process transport runs each client (one after another) in a daemon
thread and goes on without a client still running after `timeout_s`; Flower's transport
applies the timeout to the whole round's `send_and_receive`, where clients run in parallel.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("fedunlearn")


class RoundTimeout(TimeoutError):
    """A client did not reply within federation.round_timeout_s."""


def cause_of(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class MonitoredTransport:
    def __init__(self, inner, timeout_s: float = 0.0):
        self.inner, self.timeout_s = inner, float(timeout_s)
        self.rounds: list[dict] = []  # one row per train call
        self.native_timeout = hasattr(inner, "round_timeout_s")
        if self.native_timeout:
            inner.round_timeout_s = self.timeout_s

    @property
    def info(self) -> dict[int, dict]:
        return self.inner.info

    def train(self, client_ids: list[int], state, config: dict) -> dict[int, Any]:
        start = time.perf_counter()
        if self.timeout_s > 0 and not self.native_timeout:
            replies = self._train_threads(client_ids, state, config)
        else:
            replies = self.inner.train(client_ids, state, config)
        for cid in client_ids:  # a client without any reply is a failure too, never a silent gap
            replies.setdefault(cid, RoundTimeout(f"client {cid} sent no reply"))
        failed = {cid: cause_of(r) for cid, r in sorted(replies.items()) if isinstance(r, BaseException)}
        row = {"phase": str(config.get("phase", "")), "round": int(config.get("round", 0)), "sent": len(client_ids),
               "used": len(client_ids) - len(failed), "failed": {str(c): m for c, m in failed.items()},
               "wall_s": round(time.perf_counter() - start, 3)}
        self.rounds.append(row)
        for cid, message in failed.items():
            log.warning("%s round %d: client %d left out: %s", row["phase"], row["round"], cid, message)
        return replies

    def query(self, client_id: int, name: str, state, config: dict):
        return self.inner.query(client_id, name, state, config)

    def _train_threads(self, client_ids, state, config) -> dict:
        """One client after another (their seeded training stays deterministic), each in a daemon
        thread given `timeout_s`; a client still running then is left behind and reported."""
        replies: dict[int, Any] = {}

        def one(cid):
            try:
                replies[cid] = self.inner.train([cid], state, config)[cid]
            except Exception as err:  # noqa: BLE001 - reported as this client's cause
                replies[cid] = err

        out = {}
        for cid in client_ids:
            thread = threading.Thread(target=one, args=(cid,), daemon=True)
            thread.start()
            thread.join(self.timeout_s)
            out[cid] = replies[cid] if not thread.is_alive() else RoundTimeout(
                f"client {cid} did not reply within {self.timeout_s:g} s")
        return out

    def failures(self) -> list[dict]:
        return [{"phase": r["phase"], "round": r["round"], "client": int(c), "cause": m}
                for r in self.rounds for c, m in r["failed"].items()]
