"""Limits every HTTP listener of the serving side needs (the model server and the activator).

- A client must send its request line and headers within ``keepalive_timeout``: aiohttp (>= 3.10) arms
  its keep-alive timer when a connection opens and closes a connection still waiting for a complete
  request when it fires, so idle and slow-header (slowloris) connections are dropped.
- A body must arrive within ``read_timeout`` (``read_body``): 408 otherwise.
- At most ``max_connections`` connections are open at once: past the cap a new connection is closed at
  once, so hundreds of stalled clients cannot pile up sockets and memory.
- On SIGTERM (not SIGINT) the listener drains for ``drain_seconds`` before it closes: Kubernetes sends SIGTERM as it
  removes the pod from the Service's endpoints, and kube-proxy on every node takes a moment to stop sending
  new connections to it. While draining, requests are still served, each answer carries ``Connection:
  close`` (a keep-alive client opens its next connection through the Service, to another pod), and
  ``draining(app)`` is true (readiness reports 503). Then in-flight requests finish and the process exits.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

from aiohttp import web


class Drain:
    """Whether the listener is draining; ``run_bounded`` puts one in the app under ``DRAINING``."""

    on = False


DRAINING = web.AppKey("draining", Drain)


def draining(app: web.Application) -> bool:
    """True once SIGTERM arrived: the listener is draining (see the module's docstring)."""
    state = app.get(DRAINING)
    return state is not None and state.on


@web.middleware
async def close_when_draining(request: web.Request, handler):
    """While draining, every response closes its connection (``Connection: close``)."""
    resp = await handler(request)
    if draining(request.app):
        resp.force_close()
    return resp


async def read_body(request: web.Request, timeout: float) -> bytes:
    """The whole body, within ``timeout`` seconds (``web.HTTPRequestTimeout`` otherwise)."""
    try:
        return await asyncio.wait_for(request.read(), timeout)
    except asyncio.TimeoutError:
        raise web.HTTPRequestTimeout(text=f"request body not received within {timeout:g} s") from None


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class BoundedSite(web.TCPSite):
    """A TCP site that refuses connections past ``max_connections`` open ones."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *, max_connections: int):
        super().__init__(runner, host, port)
        self.max_connections = max_connections
        self.refused = 0

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def protocol():
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                return _Refuse()
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol, self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


async def start_bounded(app: web.Application, host: str | None, port: int, *, keepalive_timeout: float,
                        max_connections: int, shutdown_timeout: float = 60.0) -> tuple[web.AppRunner, BoundedSite]:
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive_timeout, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = BoundedSite(runner, host, port, max_connections=max_connections)
    await site.start()
    return runner, site


def run_bounded(app: web.Application, host: str, port: int, *, keepalive_timeout: float, max_connections: int,
                on_start: Callable[[], None] | None = None, drain_seconds: float = 0.0,
                shutdown_timeout: float = 60.0) -> None:
    """Like ``web.run_app`` (until SIGINT/SIGTERM), with the limits above; after SIGTERM it drains for
    ``drain_seconds`` (the app must have the ``close_when_draining`` middleware) before closing. Closing stops
    accepting connections, then waits up to ``shutdown_timeout`` s for the requests being handled."""

    drain = app.setdefault(DRAINING, Drain())  # before the app is frozen by the start

    async def main() -> None:
        runner, _ = await start_bounded(app, host, port, keepalive_timeout=keepalive_timeout,
                                        max_connections=max_connections, shutdown_timeout=shutdown_timeout)
        if on_start is not None:
            on_start()
        stop = asyncio.Event()
        got: list[int] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda s=sig: (got.append(s), stop.set()))
        try:
            await stop.wait()
            if drain_seconds > 0 and got[-1] == signal.SIGTERM:  # Ctrl-C at a terminal stops at once
                drain.on = True
                stop.clear()  # a second signal ends the drain early
                try:
                    await asyncio.wait_for(stop.wait(), drain_seconds)
                except asyncio.TimeoutError:
                    pass
        finally:
            await runner.cleanup()

    asyncio.run(main())
