"""The shared-token interceptor and TLS, over real channels."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc

from tests.inference.helpers import publish

TOKEN = "s3cret-token"


@pytest.fixture
def token_server(serve, tmp_path):
    publish(tmp_path / "artifacts", "v1", seed=1)
    return serve(auth_token=TOKEN)


@pytest.mark.parametrize(
    "metadata, reason",
    [
        ((), "no authorization"),
        ((("authorization", "Bearer wrong"),), "wrong token"),
        ((("authorization", TOKEN),), "wrong token"),  # the scheme is part of it
        # Two tokens, the right one among them: which one counts would be a guess (before, the last one did).
        ((("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")), "2 authorization values"),
        ((("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN}")), "2 authorization values"),
    ],
    ids=["none", "wrong", "no scheme", "right then wrong", "wrong then right"],
)
def test_calls_without_the_token_are_unauthenticated(token_server, metadata, reason):
    with pytest.raises(grpc.RpcError) as e:
        token_server.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata, timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason in e.value.details()


def test_calls_with_the_token_pass(token_server, digit_pngs):
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    response = token_server.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), metadata=metadata, timeout=5)
    assert response.model_version == "v1"


def test_health_checks_need_no_token(token_server):
    response = token_server.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_the_token(token_server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with pytest.raises(grpc.RpcError) as e:
        ProtoReflectionDescriptorDatabase(token_server.channel).get_services()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tls_with_token(serve, tmp_path, tls_files, digit_pngs):
    cert, key = tls_files
    publish(tmp_path / "artifacts", "v1", seed=1)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    running = serve(tls_cert=cert, tls_key=key, auth_token=TOKEN, channel_credentials=credentials)

    metadata = (("authorization", f"Bearer {TOKEN}"),)
    response = running.stub.Predict(pb.PredictRequest(image=digit_pngs[0][1]), metadata=metadata, timeout=10)
    assert response.model_version == "v1"

    # A plaintext client cannot talk to the TLS port.
    with grpc.insecure_channel(f"localhost:{running.port}") as plain:
        with pytest.raises(grpc.RpcError) as e:
            inference_pb2_grpc.InferenceStub(plain).GetModelInfo(pb.GetModelInfoRequest(), metadata=metadata, timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    # A client that does not trust the certificate is refused too.
    with grpc.secure_channel(f"localhost:{running.port}", grpc.ssl_channel_credentials()) as untrusting:
        with pytest.raises(grpc.RpcError) as e:
            health_pb2_grpc.HealthStub(untrusting).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_needs_both_files(tmp_path, mnist_dir, tls_files):
    from inference.options import ServerOptions
    from inference.server import create_server

    with pytest.raises(ValueError, match="both"):
        create_server("127.0.0.1:0", ServerOptions(artifacts_dir=tmp_path, data_dir=mnist_dir, tls_cert=tls_files[0]))


def test_empty_token_is_refused():
    from inference.security import BearerTokenInterceptor

    with pytest.raises(ValueError):
        BearerTokenInterceptor("")


def test_a_token_read_from_a_secret_file_loses_its_newline_for_both_services():
    from inference.security import checked_token

    assert checked_token("s3cret\n", "--token") == "s3cret"
    assert checked_token("  a b  ", "--token") == "a b"  # a space inside can be sent
