"""Whether a server can listen on an address, found out before it spends seconds loading a model (and importing
torch): light on purpose, the standard library only."""

from __future__ import annotations

import errno
import os
import socket
import sys

from asr import UserError, first_line

HOST_HINT = "give --host an address of this machine (127.0.0.1, or 0.0.0.0 for all its interfaces)"


def cannot_listen(host: str, port: int, e: OSError) -> UserError:
    """Why the server cannot listen on host:port, in one line saying what to do."""
    reason = e.strerror or first_line(e)
    if e.errno == errno.EADDRINUSE:
        reason += "; stop what listens there, or give another --port (0 = any free one)"
    elif e.errno == errno.EADDRNOTAVAIL:
        reason += f"; {HOST_HINT}"
    return UserError(f"cannot listen on {host}:{port}: {reason}")


def check_address(host: str, port: int) -> None:
    """Raises UserError (cannot_listen) when the server could not listen on host:port: the port in use, or the host
    not an address of this machine. Binds a socket to each of its addresses as the server does (SO_REUSEADDR on
    POSIX, an IPv6 socket IPv6 only: asyncio's defaults) and closes it, so that a command can say so before it loads a
    model for seconds."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; {HOST_HINT}") from None
    for family, kind, proto, _, address in dict.fromkeys(addresses):
        with socket.socket(family, kind, proto) as sock:
            if os.name == "posix" and sys.platform != "cygwin":  # elsewhere it would let a bind steal the port
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as e:
                raise cannot_listen(host, port, e) from None
