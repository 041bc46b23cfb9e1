"""A guard that refuses every connection or name lookup outside the loopback range."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["NetworkBlockedError", "block_network", "is_loopback_address"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class NetworkBlockedError(OSError):
    """A test tried to reach an address outside 127.0.0.0/8 and ::1."""


def is_loopback_address(host: object) -> bool:
    """True for loopback IPs and names, and for Unix-socket paths."""
    if isinstance(host, bytes):
        return True  # AF_UNIX abstract/path addresses
    if not isinstance(host, str):
        return False
    if host.lower() in _LOOPBACK_NAMES or host.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@contextmanager
def block_network() -> Iterator[list[str]]:
    """Within the block, non-loopback `connect` and `getaddrinfo` raise `NetworkBlockedError`.

    Yields the list of refused targets, so a caller can fail a test even when the code under
    test swallowed the error.
    """
    violations: list[str] = []
    lock = threading.Lock()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def refuse(target: str) -> NetworkBlockedError:
        with lock:
            violations.append(target)
        return NetworkBlockedError(f"moa test network guard: refused to reach {target}")

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family == socket.AF_UNIX:
            return
        host = address[0] if isinstance(address, tuple) else address
        if not is_loopback_address(host):
            raise refuse(repr(address))

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and not is_loopback_address(name):
            raise refuse(f"name lookup of {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
    socket.getaddrinfo = getaddrinfo
    try:
        yield violations
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo
