"""A call's refusal given as its answer (the status set, an empty message returned), never raised (context.abort).

Why: context.abort raises an exception that gRPC keeps in the call's state, and the exception's traceback keeps
every frame it passed through, among them the context (so the state): a reference cycle, which only Python's
cyclic garbage collector frees, and a warm server runs a full collection seldom. Those frames hold the request's
bytes (the parser's and each interceptor's frame), and, chained as the exception's __context__, the frames of what
failed: the pipeline's working arrays of a picture it refused. Measured (bench/bench_memory.py --part working):
16 concurrent Predicts of a 3 MB colour-noise PNG, each refused as too noisy, left `python -m inference` +415 /
+756 / +1,001 MiB over its warm size after three rounds (+1,310 MiB after eight), 979 MiB of it in blocks still
allocated; one gc.collect() freed it. Refused this way instead, nothing refers to the frames once the call is
answered, and they go as the call ends.
"""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf.message import Message

from shared.api.mnist.v1 import inference_pb2

Answer = TypeVar("Answer")


def refuse(context: grpc.ServicerContext, code: grpc.StatusCode, message: str, answer: Answer) -> Answer:
    """Give the call `code` and `message` as its status, and return `answer` for the handler to return: an empty
    message of the method's response type (b"" for a handler without a response serializer). The client sees the
    status, as it would after context.abort; gRPC sends the empty message before it, and clients drop it."""
    context.set_code(code)
    context.set_details(message)
    return answer


def message_types(method: str) -> tuple[type[Message], type[Message]]:
    """The request and response message classes of the Inference service's `method` (e.g. "Predict")."""
    described = inference_pb2.DESCRIPTOR.services_by_name["Inference"].methods_by_name[method]
    return getattr(inference_pb2, described.input_type.name), getattr(inference_pb2, described.output_type.name)
