"""Fixtures for the inference tests: a server per module, the users' pictures and the trained model's answers to
them (read once for every test that scores them), and TLS files. The helpers they use (published models,
a real server on a free port and a channel to it) are in helpers.py; `serve` and `digit_pngs`, which the
reliability tests use too, in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.user_images import PAPER_KINDS, cached_user_images, make_printed_digits
from tests.inference.helpers import predict_batches, publish, start_server


@pytest.fixture(scope="module")
def module_server(tmp_path_factory, mnist_dir):
    """One server per test module, serving model "v1" (seed 1), with small limits so tests can exceed them."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    publish(artifacts, "v1", seed=1)
    r = start_server(
        artifacts,
        mnist_dir,
        max_batch_size=16,
        max_image_bytes=200_000,
        max_image_pixels=4_000_000,
        max_message_bytes=1_000_000,
    )
    assert r.server.store.current is not None and r.server.store.current.version == "v1"
    yield r
    r.channel.close()
    r.server.stop(grace=0)


@pytest.fixture(scope="module")
def trained_server(trained_artifacts, mnist_dir):
    """A server for this module serving the model the session trained (tests/conftest.py trained_artifacts)."""
    running = start_server(trained_artifacts, mnist_dir)
    assert running.server.store.current is not None, "the trained model was not served"
    yield running
    running.channel.close()
    running.server.stop(grace=0)


@pytest.fixture(scope="session")
def drawn_pictures(mnist):
    """Users' drawn digits, every drawn style (made in the fixture, so no test's timeout pays for drawing them)."""
    return cached_user_images(mnist, "drawn", None)


@pytest.fixture(scope="session")
def paper_pictures(mnist):
    """Digits on every kind of real paper."""
    return cached_user_images(mnist, "paper", list(PAPER_KINDS))


@pytest.fixture(scope="session")
def printed_pictures():
    """Digits typed in the machine's fonts, 10 per font."""
    return make_printed_digits(per_font=10, seed=0)


@pytest.fixture(scope="session")
def users_results(trained_artifacts, mnist_dir, drawn_pictures, paper_pictures, printed_pictures) -> dict:
    """Every user's picture the tests score (drawn, on paper, printed) read once with PredictBatch by a real server of
    the session's trained model: picture bytes -> its pb.BatchResult. test_user_drawings.py scores their digits and
    test_not_digit.py how many are flagged, from the same answers (asked twice, they cost the suite 24 s more)."""
    running = start_server(trained_artifacts, mnist_dir)
    served = running.server.store.current
    # A model without the not-digit class would call every picture a digit: the flag-rate test could not fail.
    assert served is not None and served.digit_threshold is not None, "the trained model was not served"
    try:
        pictures = [p.data for p in (*drawn_pictures, *paper_pictures, *printed_pictures)]
        return dict(zip(pictures, predict_batches(running.stub, pictures), strict=True))
    finally:
        running.channel.close()
        running.server.stop(grace=0)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key (PEM), made with `cryptography`:
    no external tool, so the TLS tests run (never skip) wherever the dev dependencies are installed."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path
