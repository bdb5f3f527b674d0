"""Graceful shutdown: on SIGTERM or SIGINT, finish what is under way, record it, stop.

mitmproxy's own shutdown (`master.shutdown()`) runs the `done` hooks at once: the
journal closes while streams are still running, and asyncio then cancels them -- the
agents get cut-off answers and those requests no audit record. Instead, on a signal:

1. stop listening: the listening sockets are closed, a new connection is refused;
2. let the requests and streams in flight finish, for up to `egressguard_shutdown_grace`
   seconds. A request that arrives meanwhile on a connection already open is served
   too (the agent sent it before it could know); HTTP/1 answers then carry
   `Connection: close` (but for streams whose headers went out before), so agents
   take their next request elsewhere;
3. close every agent connection. A request or stream still running is cut off; its
   record is written as for any flow that ends in an error, with the error
   `cut off at shutdown ...`. Cut flows get RECORD_WAIT more seconds to reach it (a
   hook may be waiting on Vault);
4. `master.shutdown()`: the `done` hooks commit the journal, write its shutdown
   checkpoint and close it; `egressguard run` then stops the shipper and exits 0.

A second signal skips what is left of the grace. This addon comes last in the
pipeline, so a flow counts as finished only once every other addon (Audit: its record
is on disk) has seen its end. It reads two mitmproxy internals, the proxyserver's
`servers` and `connections`; tests/e2e/test_shutdown.py fails if an upgrade moves them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from collections.abc import Callable, Iterable

from mitmproxy import ctx, exceptions, http

from egressguard.pipeline import flowstate

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
RECORD_WAIT = 5.0  # seconds cut-off flows get to reach their audit record
POLL = 0.02  # seconds between looks at what is left, once everything is cut off


class Shutdown:
    def __init__(self) -> None:
        self.grace = 30.0
        self.in_flight: dict[str, http.HTTPFlow] = {}  # by flow id
        self.draining = False  # set from the first signal on (readiness can report it)
        self._idle = asyncio.Event()  # set when draining and nothing is in flight
        self._hurry = asyncio.Event()  # a second signal
        self._task: asyncio.Future[None] | None = None
        self._stopped = False

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("egressguard_shutdown_grace", float, 30.0,
                          "Seconds in-flight requests and streams get to finish on SIGTERM "
                          "or SIGINT before they are cut off (0: cut off at once).")

    def configure(self, updated: set[str]) -> None:
        if "egressguard_shutdown_grace" in updated:
            grace = ctx.options.egressguard_shutdown_grace
            if not (math.isfinite(grace) and grace >= 0):
                raise exceptions.OptionsError(
                    f"egressguard_shutdown_grace is 0 or more seconds; found {grace!r}")
            self.grace = grace

    def running(self) -> None:
        # over mitmproxy's (and `egressguard run`'s) handlers, which shut down at once
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self.signalled, sig)

    def done(self) -> None:
        self._stopped = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def signalled(self, sig: int) -> None:
        if self._stopped:
            return
        if self._task is None:
            log.info("%s: shutting down", signal.Signals(sig).name)
            self._task = asyncio.ensure_future(self.drain())
        elif not self._hurry.is_set():
            log.warning("%s again: cutting off what is still in flight",
                        signal.Signals(sig).name)
            self._hurry.set()

    # -- flows in flight ----------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.in_flight[flow.id] = flow

    def response(self, flow: http.HTTPFlow) -> None:
        if self.draining:
            _last_on_connection(flow)
        if flow.websocket is None:  # a WebSocket session goes on until websocket_end
            self._ended(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._ended(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self._ended(flow)

    def _ended(self, flow: http.HTTPFlow) -> None:
        self.in_flight.pop(flow.id, None)
        if self.draining and not self.in_flight:
            self._idle.set()

    # -- the sequence -------------------------------------------------------------------
    async def drain(self) -> None:
        """Steps 1-3, then mitmproxy's shutdown -- which happens whatever went wrong."""
        try:
            await self._drain()
        except Exception:  # noqa: BLE001 - a failed drain must still stop the proxy
            log.exception("shutdown: draining failed; stopping now")
        finally:
            ctx.master.shutdown()

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.draining = True
        await _stop_listening()
        if self.in_flight:
            log.info("stopped listening; waiting up to %gs for %d request(s) in flight",
                     self.grace, len(self.in_flight))
            self._idle.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (self._idle, self._hurry)]
            await asyncio.wait(waits, timeout=self.grace, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        else:
            log.info("stopped listening; nothing in flight")
        if self.in_flight:
            waited = loop.time() - started
            why = f"cut off at shutdown: still running after {waited:.1f}s " \
                  f"(--shutdown-grace {self.grace:g})"
            log.warning("shutdown: cutting off %d request(s) still in flight: %s",
                        len(self.in_flight), ", ".join(_ids(self.in_flight.values())))
            for flow in self.in_flight.values():
                flow.metadata[flowstate.SHUTDOWN_CUT] = why
                log.warning("%s", why, extra={"request_id": _ids([flow])[0]})
        connections = _close_connections()
        deadline = loop.time() + RECORD_WAIT
        while (self.in_flight or connections()) and loop.time() < deadline:
            await asyncio.sleep(POLL)
        if self.in_flight:
            log.error("shutdown: %d request(s) did not reach their audit record within "
                      "%gs: %s", len(self.in_flight), RECORD_WAIT,
                      ", ".join(_ids(self.in_flight.values())))
        log.info("shutdown: drained in %.1fs; closing the journal",
                 loop.time() - started)


def _last_on_connection(flow: http.HTTPFlow) -> None:
    """An HTTP/1 answer tells the agent not to send another request on its connection."""
    response = flow.response
    if response is not None and flow.websocket is None \
            and flow.request.http_version.startswith("HTTP/1"):
        response.headers["connection"] = "close"


async def _stop_listening() -> None:
    proxyserver = ctx.master.addons.get("proxyserver")
    if proxyserver is not None:  # closes every listening socket (mode list emptied)
        await proxyserver.servers.update([])


def _close_connections() -> Callable[[], int]:
    """Close every agent connection; return a function telling how many are left."""
    proxyserver = ctx.master.addons.get("proxyserver")
    if proxyserver is None:
        return lambda: 0
    for handler in list(proxyserver.connections.values()):
        io = handler.transports.get(handler.client)
        if io is not None and io.handler is not None and not io.handler.done():
            handler.close_connection(handler.client)
    return lambda: len(proxyserver.connections)


def _ids(flows: Iterable[http.HTTPFlow]) -> list[str]:
    return [str(f.metadata.get(flowstate.REQUEST_ID)) for f in flows]
