"""The Host names a gateway answers (--allowed-hosts), as the command line reads them."""

from __future__ import annotations

import re

import pytest

from inference.web.guards import default_allowed_hosts, host_allowed, host_name, parse_allowed_hosts

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


@pytest.mark.parametrize("bind", ["127.0.0.1", "localhost", "::1", "[::1]", " LOCALHOST "])
def test_a_gateway_on_loopback_answers_only_the_loopback_names_by_default(bind):
    assert default_allowed_hosts(bind) == LOOPBACK


@pytest.mark.parametrize(
    "bind, bound",
    [
        ("127.0.0.2", "127.0.0.2"),
        ("127.1", "127.1"),  # 127.0.0.1, as the socket layer reads it
        ("localhost.", "localhost."),
        ("::ffff:127.0.0.1", "[::ffff:127.0.0.1]"),
        ("[::ffff:127.0.0.2]", "[::ffff:127.0.0.2]"),
    ],
)
def test_a_gateway_on_any_loopback_address_answers_only_the_loopback_names_and_that_address_by_default(bind, bound):
    """Only the three names counted as loopback: on 127.0.0.2, 127.1, 'localhost.' or ::ffff:127.0.0.1 the gateway
    answered every Host, and a page of another site resolved there could read its answers (DNS rebinding)."""
    assert default_allowed_hosts(bind) == (*LOOPBACK, bound)
    # The local stack hands them to the gateway as --allowed-hosts would, where each must be taken as it is.
    assert parse_allowed_hosts(",".join(default_allowed_hosts(bind))) == (*LOOPBACK, bound)


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.168.1.20", "::ffff:10.0.0.1", "example.com"])
def test_a_gateway_shown_to_the_network_answers_any_name_by_default(bind):
    assert default_allowed_hosts(bind) == ("*",)


@pytest.mark.parametrize(
    "header, host",
    [("Example.COM:8080", "example.com"), ("example.com", "example.com"), ("[::1]:8080", "[::1]"), ("[::1]", "[::1]")],
)
def test_the_host_of_a_host_header_is_its_name_without_the_port(header, host):
    assert host_name(header) == host


def test_a_name_is_allowed_exactly_or_as_a_subdomain_of_a_star_pattern():
    allowed = parse_allowed_hosts(" Example.com, *.apps.example.com ")
    assert allowed == ("example.com", "*.apps.example.com")
    assert host_allowed("example.com", allowed) and host_allowed("web.apps.example.com", allowed)
    assert not host_allowed("apps.example.com", allowed)  # *.x names x's subdomains, not x
    assert not host_allowed("evil-example.com", allowed) and not host_allowed("", allowed)
    assert host_allowed("anything", parse_allowed_hosts("*"))


def test_a_bare_ipv6_address_is_allowed_as_the_host_header_writes_it():
    """'::1' was kept as given and matched no request: the header's host is '[::1]'."""
    allowed = parse_allowed_hosts("::1, [fe80::2], localhost")
    assert allowed == ("[::1]", "[fe80::2]", "localhost")
    assert host_allowed(host_name("[::1]:8080"), allowed) and host_allowed(host_name("[fe80::2]"), allowed)


@pytest.mark.parametrize("value, said", [("localhost:8080", "'localhost'"), ("[::1]:8080", "'[::1]'")])
def test_a_host_given_with_a_port_is_refused_saying_to_name_it_without(value, said):
    """'localhost:8080' was taken, matched no Host header (their ports are dropped) and every request got 400."""
    with pytest.raises(ValueError, match=f"name the host without a port \\(as in {re.escape(said)}\\)"):
        parse_allowed_hosts(value)
