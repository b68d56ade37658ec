"""Slow clients (issue 23 item 4): a header sent a byte at a time is cut off, and uploads
trickling in do not take the places of the requests being processed."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.service.helpers import encode_file, make_settings, random_image, serving, wait_until


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_an_unfinished_header_is_cut_off(artifact_dir: Path) -> None:
    settings = make_settings(artifact_dir, header_timeout_s=0.5)
    with serving(settings) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        with (
            socket.create_connection(("127.0.0.1", port)) as silent,
            socket.create_connection(("127.0.0.1", port)) as partial,
        ):
            partial.sendall(b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert closed_by_server(silent, within=3.0)
            assert closed_by_server(partial, within=3.0)
        # A kept-alive connection is not cut while idle between requests (keep-alive rules).
        with httpx.Client(base_url=url) as client:
            assert client.get("/healthz").status_code == 200
            time.sleep(1.0)
            assert client.get("/healthz").status_code == 200


@contextlib.contextmanager
def trickling(port: int, n: int) -> Iterator[list[socket.socket]]:
    """``n`` uploads that sent their header and a few bytes of a long body, and wait."""
    head = (
        b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 100000\r\n\r\n" + b'{"images": ["'
    )
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    try:
        for sock in socks:
            sock.sendall(head)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_slow_uploads_do_not_take_the_places_of_other_requests(artifact_dir: Path) -> None:
    settings = make_settings(
        artifact_dir, max_concurrent_requests=2, max_reading_bodies=6, min_body_rate=0
    )
    files = {"files": ("a.png", encode_file(random_image(16, 16)), "image/png")}
    with serving(settings) as (url, state, _):
        port = int(url.rsplit(":", 1)[1])
        with trickling(port, 4):
            wait_until(lambda: state.input_budget.used > 0)  # their bytes are reserved
            for _ in range(3):  # 4 slow uploads, 2 places: the places are still free
                response = httpx.post(f"{url}/v1/tokenize", files=files, timeout=10)
                assert response.status_code == 200, response.text
            assert httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            with trickling(port, 3):  # 7 bodies arriving, 6 allowed: the next is refused
                time.sleep(0.3)
                refused = httpx.post(f"{url}/v1/tokenize", files=files, timeout=10)
                assert refused.status_code == 503, refused.text
                assert refused.json()["code"] == "overloaded"
                assert "max_reading_bodies" in refused.json()["detail"]
