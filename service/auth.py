"""Optional API keys: ``Authorization: Bearer <key>`` on the tokenize, detokenize and model
routes (and on /metrics when it has keys of its own).

Keys are held only as SHA-256 digests: plain keys (``api_keys``) are hashed when the app is
built, and a key file (``api_key_file``) holds digests, so the secret never needs to sit on
the server's disk. A presented key is hashed and compared with every digest by
``hmac.compare_digest``, without stopping at the first match, so neither the comparison nor
the number of digests tried tells a caller how close a guess came. Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from service.errors import APIError, ErrorCode

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="vq-serve"'}
_DIGEST_PREFIX = "sha256:"


def digest(key: str) -> bytes:
    """The SHA-256 digest a key is stored and compared as."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def read_key_file(path: Path) -> list[bytes]:
    """Digests from a key file: one ``sha256:<64 hex digits>`` per line (``#`` comments and
    blank lines skipped), e.g. ``printf 'sha256:%s\\n' "$(printf %s "$KEY" | sha256sum |
    cut -d' ' -f1)"``. ValueError naming the line for anything else."""
    digests = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        hexdigest = line.removeprefix(_DIGEST_PREFIX)
        try:
            value = bytes.fromhex(hexdigest)
        except ValueError:
            value = b""
        if not line.startswith(_DIGEST_PREFIX) or len(value) != 32:
            raise ValueError(
                f"{path}:{number} is not a key digest; expected 'sha256:' and 64 hex digits "
                "(the SHA-256 of the key), one per line"
            )
        digests.append(value)
    if not digests:
        raise ValueError(f"{path} holds no key digests; expected lines 'sha256:<64 hex digits>'")
    return digests


def matches(presented: str, digests: Iterable[bytes]) -> bool:
    """Whether ``presented`` is one of the keys, in time independent of which one (or how
    many characters of one) it matches."""
    wanted = digest(presented)
    found = False
    for stored in digests:
        found |= hmac.compare_digest(wanted, stored)
    return found


def digests_of(keys: Iterable[SecretStr], key_file: Path | None) -> list[bytes]:
    """Every accepted key as a digest: the plain keys hashed, the key file's as they are."""
    digests = [digest(key.get_secret_value()) for key in keys]
    return digests + (read_key_file(key_file) if key_file is not None else [])


# auto_error=False: a missing or malformed header gets the service's own 401 body. Through
# this the OpenAPI schema names the scheme on each keyed route (Swagger UI's "Authorize").
_bearer = HTTPBearer(auto_error=False, description="An API key (setting api_keys)")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def key_check(digests: list[bytes], what: str) -> Callable[..., None]:
    """A FastAPI dependency that answers 401 ``unauthorized`` unless the request carries one
    of the keys (``digests``) as a bearer token; ``what`` names the setting in the message."""

    def require_key(credentials: Credentials) -> None:
        token = credentials.credentials.strip() if credentials is not None else ""
        if not token:
            raise APIError(
                ErrorCode.UNAUTHORIZED,
                f"this service requires an API key ({what}): send 'Authorization: Bearer <key>'",
                headers=CHALLENGE,
            )
        if not matches(token, digests):
            raise APIError(ErrorCode.UNAUTHORIZED, "the API key is not valid", headers=CHALLENGE)

    return require_key


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only admits connections from this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)
