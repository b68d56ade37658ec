"""``vq-serve``: run the service under uvicorn.

    vq-serve [--host H] [--port P] [--model NAME=PATH ...] [--device cpu|cuda] ...

The flags are ``service.settings.Settings``'s fields (pydantic-settings' command-line
source); they override the ``VQ_*`` environment variables, which override the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, cast

import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliApp, CliSettingsSource

from service.app import create_app
from service.auth import is_loopback
from service.limits import header_timeout_protocol
from service.loader import StartupError, check_backend_available
from service.settings import Settings
from service.state import ServiceState

LINGER_S = 0.5  # after the listener closes, for requests on just-accepted connections


# Each drains (readiness 503, in-flight requests finish) and the process exits 0: SIGTERM from
# an orchestrator, SIGINT from a terminal, SIGHUP when the terminal goes away.
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class DrainingServer(uvicorn.Server):
    """uvicorn, with readiness turned 503 and new work refused the moment a drain signal
    arrives (``DRAIN_SIGNALS``); a second signal stops at once."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self.service_state = state
        self.failure: str | None = None  # why the models could not be loaded

    def load_failed(self, message: str) -> None:
        """The background load failed: say so in one line and stop (exit 1)."""
        self.failure = message
        print(f"vq-serve: error: {message}", file=sys.stderr, flush=True)
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's own handling re-raises the signal after shutting down (exit -15 or 130)
        # and leaves SIGHUP at its default, which kills the process mid-request.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in DRAIN_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = self.service_state
        if state.draining or self.should_exit:
            super().handle_exit(sig, frame)  # a second signal: stop now
            return
        # A drain is the orderly way out: keep the listener open for shutdown_delay_s
        # (readiness 503, new requests 503 + Connection: close), then let uvicorn stop
        # accepting and wait for in-flight requests; exit 0 once done.
        state.begin_drain()
        timer = threading.Timer(state.settings.shutdown_delay_s, self._stop)
        timer.daemon = True
        timer.start()

    def _stop(self) -> None:
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes the listener and then every connection not mid-request at once; a
        # connection accepted a moment earlier whose request has not been parsed yet would
        # be cut (the client sees a reset). Stop accepting first, give those requests a
        # moment to arrive and be answered (503 while draining), then shut down as usual.
        for server in self.servers:
            server.close()
        await asyncio.sleep(LINGER_S)
        await super().shutdown(sockets)


# pydantic-settings names a flag's value after its type (``dict[str,str]``, ``int``); these
# say what to write.
_METAVARS = {
    "models": "NAME=PATH",
    "memory_budget": "SIZE",
    "precision": "{fp32,bf16,auto}",
    "api_keys": "KEY",
    "api_key_file": "PATH",
    "metrics_keys": "KEY",
}


def _add_argument(parser: argparse.ArgumentParser, *names: str, **kwargs: Any) -> argparse.Action:
    if kwargs.get("dest") in _METAVARS:
        kwargs["metavar"] = _METAVARS[kwargs["dest"]]
    help_text = kwargs.get("help")
    if isinstance(help_text, str) and " (default: null)" in help_text:
        # pydantic-settings prints a None default as "null"; the description says what None
        # means where it has a "(default: ...)" of its own, else the flag is unset.
        prose = "(default:" in help_text.replace(" (default: null)", "")
        kwargs["help"] = help_text.replace(" (default: null)", "" if prose else " (default: unset)")
    return parser.add_argument(*names, **kwargs)


def settings_source() -> CliSettingsSource[Settings]:
    """The command line of ``Settings``: a flag per field (``--max-queue``, ``--model`` for
    ``models``, ``--allow-unverified`` and ``--no-batching`` for the booleans; how the names
    are made is in ``Settings.model_config``), each over its ``VQ_*`` variable."""
    parser = argparse.ArgumentParser(
        prog="vq-serve",
        description="Serve image tokenizers over HTTP (tokenize, detokenize, usage, dashboard). "
        "Flags override the VQ_* environment variables, which override the defaults.",
    )
    return CliSettingsSource(Settings, root_parser=parser, add_argument_method=_add_argument)


def build_parser() -> argparse.ArgumentParser:
    """``vq-serve``'s argument parser (its ``--help``); ``settings_from_args`` reads what it
    parsed."""
    return cast(argparse.ArgumentParser, settings_source().root_parser)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed flags over the environment (ValidationError for bad values)."""
    return CliApp.run(Settings, cli_args=args, cli_settings_source=settings_source())


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ValidationError, ValueError) as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    warning = open_bind_warning(settings)
    if warning is not None:
        logging.getLogger("service").warning(warning)
    # The port first: a port already taken ends here, before any model is loaded; then the
    # server answers /healthz (and /readyz 503 "loading") while the models load behind it.
    try:
        listener = listen(settings.host, settings.port)
    except OSError as exc:
        parser.exit(
            1,
            f"vq-serve: error: cannot listen on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}; stop the process holding it or choose another --port\n",
        )
    # A missing library ends here with one line; a model that cannot be had (a Hub id
    # offline, a damaged artifact) ends the load in the background with one line (exit 1).
    try:
        check_backend_available(settings)
    except StartupError as exc:
        listener.close()
        parser.exit(1, f"vq-serve: error: {exc}\n")
    server: DrainingServer | None = None

    def load_failed(message: str) -> None:
        assert server is not None
        server.load_failed(message)

    app = create_app(settings, on_load_failure=load_failed)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # uvicorn's own drain: after SIGTERM it stops accepting, lets open requests finish
        # for this long, then runs the app's shutdown.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        # Longer than clients' and balancers' idle timeouts (httpx 5 s, nginx 75 s): the side
        # that closes an idle keep-alive connection first races a request sent on it.
        timeout_keep_alive=75,
        http=header_timeout_protocol(settings.header_timeout_s),
    )
    server = DrainingServer(config, app.state.service)
    server.run(sockets=[listener])
    sys.exit(0 if server.started and server.failure is None else 1)


def open_bind_warning(settings: Settings) -> str | None:
    """The start-up log's line when the service binds an address other machines reach and
    requires no key; None otherwise."""
    if settings.requires_key or is_loopback(settings.host):
        return None
    return (
        f"listening on {settings.host} without an API key: anyone who can reach the port can "
        "use the service (set --api-key or VQ_API_KEYS; docs/operations.md, 'Access')"
    )


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (OSError if taken): connections queue in its
    backlog from now on, before the app starts."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


if __name__ == "__main__":
    main()
