"""Answers over the server's --max-message-bytes, refused with a status that says so.

gRPC applies the limit to what the server sends as well as to what it reads (grpc.max_send_message_length): an
answer over it (a PredictBatch of many pictures with their 28x28 inputs, an Evaluate's heatmap, under a small
limit) failed at the caller with RESOURCE_EXHAUSTED "Sent message larger than max", after the service had done all
the work, while the server's access log and metrics counted the call as OK. Measured here, the answer becomes that
status in the handler, so the log, the metrics and the caller agree, and the message says what to ask instead.
"""

from __future__ import annotations

import grpc


class ResponseSizeInterceptor(grpc.ServerInterceptor):
    """Refuse a unary answer larger than `max_bytes` with RESOURCE_EXHAUSTED (inside the access log's interceptor,
    so the call is logged and counted with that code)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler  # health Watch and reflection stream: gRPC's own limit applies as before
        inner = handler.unary_unary
        method = handler_call_details.method.rpartition("/")[2]

        def behaviour(request, context: grpc.ServicerContext):
            response = inner(request, context)
            if response is not None and (size := response.ByteSize()) > self.max_bytes:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    # "the limit is": the words the REST gateway reads as 413, as for a request over a limit.
                    f"the {method} answer is {size:,} bytes, more than the server sends in one message (the limit "
                    f"is {self.max_bytes:,} bytes, its --max-message-bytes): ask for less in one call (fewer "
                    "images, without return_model_input or the heatmap), or raise the server's limit",
                )
            return response

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
