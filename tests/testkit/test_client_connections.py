"""The benchmarks' clients each open a TCP connection of their own, as separate client processes would: channels
to one target in one process otherwise share one connection (gRPC's global subchannel pool), and a load test of
"16 clients" is one client's connection. Counted by the server: each call's peer address (host:port of the client's
end of the connection) names its connection."""

from __future__ import annotations

import threading
from argparse import Namespace
from concurrent import futures

import grpc
import pytest

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc

from bench.bench_load import Client
from inference.channel import make_channel
from testkit.memory import flood

CLIENTS = 8


class PeerRecorder(inference_pb2_grpc.InferenceServicer):
    """Answers Predict at once and notes which connection each call came on."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.lock = threading.Lock()

    def Predict(self, request, context):
        with self.lock:
            self.peers.append(context.peer())
        return pb.PredictResponse(model_version="v1")


@pytest.fixture
def recorder():
    servicer = PeerRecorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2 * CLIENTS))
    inference_pb2_grpc.add_InferenceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=0)


def test_channels_made_for_their_own_connection_each_have_one(recorder):
    servicer, target = recorder
    channels = [make_channel(target, own_connection=True) for _ in range(CLIENTS)]
    try:
        for channel in channels:
            inference_pb2_grpc.InferenceStub(channel).Predict(pb.PredictRequest(image=b"x"), timeout=10)
    finally:
        for channel in channels:
            channel.close()
    assert len(set(servicer.peers)) == CLIENTS, servicer.peers


def test_the_load_benchmarks_clients_each_have_a_connection(recorder):
    servicer, target = recorder
    args = Namespace(batch_size=2, batch_every=0, timeout=10.0)  # batch_every 0: Predict only
    clients = [Client(i, target, [b"x"], args, threading.Barrier(1)) for i in range(CLIENTS)]
    try:
        for client in clients:
            client.call_once(0)
    finally:
        for client in clients:
            client.channel.close()
    assert not [f for client in clients for f in client.failures]
    assert len(set(servicer.peers)) == CLIENTS, servicer.peers


def test_the_memory_floods_calls_each_have_a_connection(recorder):
    servicer, target = recorder
    codes, failure, _ = flood(target, [b"x"] * CLIENTS, b"x")
    assert codes == {("OK", ""): CLIENTS} and failure is None
    # The flood's calls, then the small Predict after it (a connection of its own, which is closed by then).
    assert len(servicer.peers) == CLIENTS + 1
    assert len(set(servicer.peers[:CLIENTS])) == CLIENTS, servicer.peers
