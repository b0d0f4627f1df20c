"""Ports for the tests' servers and for addresses where nothing listens.

A test that must know a port before its server starts (a process given `--grpc-address 127.0.0.1:PORT`, a server
restarted on the same port, an address that must stay dead) finds one free, lets it go and binds it a moment later.
Found by binding port 0, it was one of Linux's ephemeral ports (32768-60999), the very range where every server
the other pytest worker starts on port 0, and every outgoing connection, takes its port: in that moment the port
could be taken. These come from below that range, where the kernel never hands a port out unasked, and above the
Docker end-to-end test's host ports (25006-25080).
"""

from __future__ import annotations

import random
import socket

PORTS = range(26000, 32000)


def free_ports(count: int) -> list[int]:
    """`count` different ports of PORTS that nothing on 127.0.0.1 holds now, drawn at random (two workers asking at
    once rarely meet). Ask for all of a test's ports in one call: two calls may give the same port."""
    rng = random.SystemRandom()
    chosen: list[int] = []
    tried: set[int] = set()
    while len(chosen) < count and len(tried) < len(PORTS):
        port = rng.choice(PORTS)
        if port in tried:
            continue
        tried.add(port)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue  # held, or lingering in TIME_WAIT after an earlier test's server
        chosen.append(port)
    if len(chosen) == count:
        return chosen
    raise RuntimeError(f"fewer than {count} free ports in {PORTS.start}-{PORTS.stop - 1} on 127.0.0.1")


def free_port() -> int:
    return free_ports(1)[0]
