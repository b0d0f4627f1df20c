"""testkit.ports: ports the tests choose before their servers start, never where port-0 servers get theirs."""

from __future__ import annotations

import socket
from pathlib import Path

from testkit.ports import PORTS, free_port, free_ports


def test_free_ports_are_different_and_bindable_now():
    ports = free_ports(20)
    assert len(set(ports)) == 20 and all(p in PORTS for p in [*ports, free_port()])
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_the_ports_lie_below_the_ephemeral_range_that_port_0_servers_draw_from():
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert PORTS.stop <= low
    with socket.socket() as s:  # what the tests used before: a port-0 bind, inside the range
        s.bind(("127.0.0.1", 0))
        assert s.getsockname()[1] >= low


def test_a_port_held_by_a_listener_is_never_chosen_and_too_few_free_is_an_error(monkeypatch):
    import pytest

    import testkit.ports

    with socket.socket() as held:
        for port in free_ports(20):  # a port whose two neighbours are free too
            if _bindable(port - 1) and _bindable(port + 1):
                break
        held.bind(("127.0.0.1", port))
        held.listen()
        monkeypatch.setattr(testkit.ports, "PORTS", range(port - 1, port + 2))
        assert sorted(free_ports(2)) == [port - 1, port + 1]
        with pytest.raises(RuntimeError, match="fewer than 3 free ports"):
            free_ports(3)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
