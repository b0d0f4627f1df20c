"""A client connection is asked to close past --max-connection-age, so that clients resolve the service's name
again (a replica added since gets calls too); its client reconnects on its own and no call fails."""

from __future__ import annotations

import time

import grpc

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc

from inference.channel import OWN_CONNECTION
from tests.inference.helpers import publish


def connections_while_calling(target: str, request: pb.PredictRequest, seconds: float) -> tuple[int, int]:
    """(times the channel became READY, calls answered) while calling Predict back to back for `seconds`; every
    call must succeed."""
    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(target, options=[OWN_CONNECTION]) as channel:
        channel.subscribe(states.append, try_to_connect=True)
        stub = inference_pb2_grpc.InferenceStub(channel)
        answered = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert stub.Predict(request, timeout=10).model_version == "v1"
            answered += 1
        channel.unsubscribe(states.append)
    return states.count(grpc.ChannelConnectivity.READY), answered


def test_a_connection_past_its_age_is_closed_and_its_client_reconnects_without_a_failed_call(
    serve, tmp_path, digit_pngs
):
    publish(tmp_path / "artifacts", "v1", seed=1)
    request = pb.PredictRequest(image=digit_pngs[0][1])
    aged = serve(max_connection_age=0.5, max_connection_age_grace=5)
    reconnections, answered = connections_while_calling(aged.target, request, 3.0)
    assert answered > 10 and reconnections >= 3, (reconnections, answered)
    # With the default age (minutes), the same calls keep one connection.
    default = serve()
    reconnections, answered = connections_while_calling(default.target, request, 3.0)
    assert answered > 10 and reconnections == 1, (reconnections, answered)
