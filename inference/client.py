"""Command-line client for the inference service: `python -m inference.client` (or `mnist-client`).

    mnist-client predict digit.png [more.jpg ...] [--preview preview.png] [--model-version VERSION]
    mnist-client read number.jpg [--preview boxes.png] [--model-version VERSION]
    mnist-client evaluate [--split test|validation] [--out confusion.png] [--model-version VERSION]
    mnist-client info
    mnist-client models

The channel rides out a server restart: calls wait for a connection (waitForReady) and a call cut off by the old
server is retried with exponential back-off (see SERVICE_CONFIG). It balances calls round-robin over every
address the target resolves to, so `--target dns:///inference:50051` spreads load over all replicas behind one
DNS name (inference/channel.py). Imports no torch: it starts in a fraction of a second. What it draws is in
inference/preview.py.
"""

from __future__ import annotations

import argparse
import io
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, TypeVar

# gRPC's own log lines (a TLS handshake that failed) went to the terminal before the client's one-line error, which
# says the same in words of what to do. gRPC's core reads this as it is imported: set only where this module imports
# it first, the client run as a program, so that a process that imported gRPC before (a server, the tests) keeps
# its own setting and passes nothing on to what it starts.
if "grpc" not in sys.modules:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc

from shared import settings
from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc
from shared.cli import ArgumentParser, HelpFormatter, escape_unprintable_output, positive_seconds, write_problem
from shared.settings import ENV_AUTH_TOKEN, ENV_TLS_CA

from inference.channel import (
    answers_now,
    describe_rpc_error,
    grpc_target,
    make_channel,
    said_for_a_person,
    tls_flags_problem,
)
from inference.preview import draw_reading, format_number, format_problem, probability_bars, save_picture, save_preview
from inference.security import bearer_metadata, ca_certificates_file, is_metadata_value

DIGITS = 10


def answer_line(prediction, model_version: str) -> str:
    """'7 (98.2%, model v1)' for a digit; 'not a digit (digit score 0.013, closest digit 7 at 48.0%, model v1)'
    for anything else."""
    confidence = prediction.probabilities[prediction.digit]
    if prediction.is_digit:
        return f"{prediction.digit} ({confidence:.1%}, model {model_version})"
    return (
        f"not a digit (digit score {prediction.digit_score:.3f}, closest digit {prediction.digit} at "
        f"{confidence:.1%}, model {model_version})"
    )


# Bytes a request message takes beyond its images: the other fields, and each image's tag and length.
MESSAGE_OVERHEAD_BYTES = 1024
IMAGE_OVERHEAD_BYTES = 16


def over_size_limit(image_bytes: int, limits: pb.InputContract, *, cut: bool = False) -> str | None:
    """Why a picture cannot be sent at all, or None: the service refuses an image over its --max-image-bytes, and
    gRPC one over what a call may carry, its --max-message-bytes ('Received message larger than max', before the
    service sees it). The smaller of the two is the one named: the file passed a check against the message limit
    alone, 16 MiB, and the service then refused it for its 10 MiB one. `cut`: a stream read no further than
    `image_bytes` (Picture.take), which holds more."""
    size = f"over {image_bytes - 1:,}" if cut else f"{image_bytes:,}"
    if 0 < limits.max_image_bytes < image_bytes and (
        limits.max_image_bytes + IMAGE_OVERHEAD_BYTES + MESSAGE_OVERHEAD_BYTES <= limits.max_message_bytes
    ):
        return (
            f"the file is {size} bytes, more than the service takes in one picture (the limit is "
            f"{limits.max_image_bytes:,} bytes, its --max-image-bytes); send a smaller picture (crop it, or save it "
            "as JPEG)"
        )
    if image_bytes + IMAGE_OVERHEAD_BYTES + MESSAGE_OVERHEAD_BYTES <= limits.max_message_bytes:
        return None
    return (
        f"the file is {size} bytes, more than one call to the service may carry (the limit is "
        f"{limits.max_message_bytes:,} bytes, its --max-message-bytes); send a smaller picture (crop it, or save it "
        "as JPEG)"
    )


@dataclass
class Picture:
    """A picture named on the command line, opened (so one that cannot be read is said at once). A file: its size,
    and its bytes read only when sent, so a picture over the service's limits is refused unread (a 3 GB file was
    read whole into memory first). A pipe or a device (/dev/stdin, <(...)), which has no size to look at: kept
    open and read once (`take`), no further than a call may carry: /dev/zero was read until the machine ran out
    of memory, and a named pipe opened twice (once for its size) lost its writer and then waited for ever."""

    path: Path
    size: int
    stream: BinaryIO | None = None
    data: bytes | None = None  # a stream's bytes, once read
    cut: bool = False  # the stream held more than it was read to

    @classmethod
    def open(cls, path: Path) -> Picture:
        f = path.open("rb")
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode):
            f.close()
            return cls(path, info.st_size)
        return cls(path, 0, f)

    def take(self, limits: pb.InputContract) -> Picture:
        """Read a stream now, to one byte past the largest picture a call carries; a file is read when sent."""
        if self.stream is not None:
            largest = max(limits.max_message_bytes - IMAGE_OVERHEAD_BYTES - MESSAGE_OVERHEAD_BYTES, 0)
            with self.stream:
                self.data = self.stream.read(largest + 1)
            self.size, self.cut = len(self.data), len(self.data) > largest
        return self

    def too_large(self, limits: pb.InputContract) -> str | None:
        """Why it cannot be sent (once taken), or None."""
        return over_size_limit(self.size, limits, cut=self.cut)

    def read(self) -> bytes:
        return self.path.read_bytes() if self.data is None else self.data

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


T = TypeVar("T")
P = TypeVar("P")


def readable(read: Callable[[], T], path: Path) -> T | None:
    """read() (opening the file at `path`, reading it), or None once it is said on stderr that it cannot be read."""
    try:
        return read()
    except OSError as e:
        print(f"{path}: cannot read: {e.strerror or e}", file=sys.stderr)
        return None


def batches(sized: list[tuple[P, int]], max_count: int, max_bytes: int) -> Iterator[list[tuple[P, int]]]:
    """`sized` (each file with its size) in order, in runs of at most `max_count` images and `max_bytes` bytes of
    request message (an image larger than that goes alone: refused by the service's message limit, it fails
    alone)."""
    run: list[tuple[P, int]] = []
    size = MESSAGE_OVERHEAD_BYTES
    for item in sized:
        cost = item[1] + IMAGE_OVERHEAD_BYTES
        if run and (len(run) == max_count or size + cost > max_bytes):
            yield run
            run, size = [], MESSAGE_OVERHEAD_BYTES
        run.append(item)
        size += cost
    if run:
        yield run


def cmd_predict(stub, args, call) -> int:
    failed = 0
    preview_rows = []
    opened = []
    for path in args.images:
        if (opening := readable(partial(Picture.open, path), path)) is None:
            failed += 1
        else:
            opened.append(opening)
    if not opened:
        return 1
    try:
        # One PredictBatch per chunk: one round trip and one forward pass; a bad image fails alone. Chunks keep to
        # the server's own limits (images per call, bytes per message), so large pictures go in several calls
        # rather than all fail together with "larger than max".
        limits = call(stub.GetModelInfo, pb.GetModelInfoRequest()).input
        sendable = []
        for picture in opened:
            if readable(partial(picture.take, limits), picture.path) is None:
                failed += 1
            elif (too_large := picture.too_large(limits)) is not None:
                print(f"{picture.path}: not accepted: {too_large}", file=sys.stderr)
                failed += 1
            else:
                sendable.append((picture, picture.size))
    finally:
        for picture in opened:
            picture.close()
    for run in batches(sendable, min(args.batch_size, limits.max_batch_size), limits.max_message_bytes):
        # Each run's files are read as it is sent: one run's pictures in memory at a time, not every file's.
        chunk = []
        for sent, _ in run:
            if (data := readable(sent.read, sent.path)) is None:
                failed += 1
            else:
                chunk.append((sent.path, data))
        if not chunk:
            continue
        try:
            response = call(
                stub.PredictBatch,
                pb.PredictBatchRequest(
                    images=[data for _, data in chunk],
                    return_model_input=args.preview is not None,
                    model_version=args.model_version,
                ),
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or len(chunk) > 1:
                raise
            # One picture over the message limit, alone in its call: it fails, the others go on.
            print(f"{chunk[0][0]}: not accepted: {said_for_a_person(e.code(), e.details() or '')}", file=sys.stderr)
            failed += 1
            continue
        for (path, data), result in zip(chunk, response.results):
            if result.HasField("error"):
                print(f"{path}: not accepted: {result.error.message}", file=sys.stderr)
                failed += 1
                continue
            prediction = result.prediction
            confidence = prediction.probabilities[prediction.digit]
            print(f"{path}: {answer_line(prediction, response.model_version)}")
            print("\n".join(probability_bars(prediction.probabilities)))
            if args.preview is not None:
                preview_rows.append(
                    (
                        path.name,
                        data,
                        prediction.model_input_png,
                        f"{prediction.digit} ({confidence:.1%})" if prediction.is_digit else "not a digit",
                    )
                )
    if args.preview is not None and preview_rows:
        save_preview(args.preview, preview_rows)
        print(f"preview saved to {args.preview}")
    return 1 if failed else 0


def cmd_read(stub, args, call) -> int:
    if (picture := readable(partial(Picture.open, args.image), args.image)) is None:
        return 1
    try:
        limits = call(stub.GetModelInfo, pb.GetModelInfoRequest()).input
        if readable(partial(picture.take, limits), picture.path) is None:
            return 1
    finally:
        picture.close()
    if (too_large := picture.too_large(limits)) is not None:
        print(f"{args.image}: not accepted: {too_large}", file=sys.stderr)
        return 1
    if (data := readable(picture.read, picture.path)) is None:
        return 1
    response = call(stub.ReadNumber, pb.ReadNumberRequest(image=data, model_version=args.model_version))
    strays = sum(not d.prediction.is_digit for d in response.per_digit)
    if strays and strays == len(response.per_digit):
        # A lone letter or a line was "?" and a warning about lines through a number, as if one were there.
        print(f"{args.image}: not a number: nothing in it looks like a digit (model {response.model_version})")
    else:
        print(
            f"{args.image}: {format_number(response)} (confidence {response.confidence:.1%}, "
            f"model {response.model_version})"
        )
    for d in response.per_digit:
        p = d.prediction
        b = d.box
        where = f"at x={b.x} y={b.y} {b.width}x{b.height}"
        if p.is_digit:
            print(f"  {p.digit}  {p.probabilities[p.digit]:6.1%}  {where}")
        else:
            print(f"  ?  not a digit (digit score {p.digit_score:.3f}, closest {p.digit})  {where}")
    if 0 < strays < len(response.per_digit):
        print(
            f"warning: {strays} of the {len(response.per_digit)} marks read are not digits (shown as ?): a line "
            "through the number, a box or an underline round it? Crop to the number alone",
            file=sys.stderr,
        )
    if args.preview is not None:
        save_picture(draw_reading(data, response), args.preview)
        print(f"preview saved to {args.preview}")
    return 0


def cmd_evaluate(stub, args, call) -> int:
    split = {"test": pb.SPLIT_TEST, "validation": pb.SPLIT_VALIDATION}[args.split]
    response = call(
        stub.Evaluate, pb.EvaluateRequest(split=split, omit_heatmap=args.out is None, model_version=args.model_version)
    )
    print(
        f"model {response.model_version}, {args.split} split: {response.count} images, "
        f"accuracy {response.accuracy:.2%}, loss {response.loss:.4f} ({response.seconds:.2f} s on the server)"
    )
    print(f"{'digit':>5} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>7}")
    for c in response.per_class:
        print(f"{c.digit:>5} {c.precision:>9.4f} {c.recall:>7.4f} {c.f1:>7.4f} {c.support:>7}")
    print("confusion matrix (rows: true digit, columns: predicted):")
    print("     " + "".join(f"{d:>6}" for d in range(DIGITS)))
    for digit, row in enumerate(response.confusion):
        print(f"{digit:>5}" + "".join(f"{v:>6}" for v in row.counts))
    if args.out is not None:
        if args.out.suffix.lower() in ("", ".png"):
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_bytes(response.heatmap_png)  # the server's PNG as it came
        else:
            from PIL import Image

            with Image.open(io.BytesIO(response.heatmap_png)) as heatmap:
                save_picture(heatmap, args.out)
        print(f"heatmap saved to {args.out}")
    return 0


def cmd_info(stub, args, call) -> int:
    info = call(stub.GetModelInfo, pb.GetModelInfoRequest())
    contract = info.input
    if info.serving:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(info.training_metrics.items())) or "none recorded"
        print(f"version       {info.version}")
        print(f"architecture  {info.arch} {info.arch_kwargs_json}, {info.parameter_count:,} parameters")
        print(f"sha256        {info.sha256}")
        print(f"trained       {info.trained_at} (run {info.run_name or '?'}, epoch {info.epoch})")
        print(f"loaded        {info.loaded_at}")
        print(f"metrics       {metrics}")
        if info.detects_not_digit:
            # The server's own threshold: the metrics' digit_threshold is the one the model was trained with, and a
            # server started with --digit-threshold judges by its own (a 0.994 was "not a digit" beside 0.1533).
            print(f"not a digit   below a digit score of {info.digit_threshold:.4g}, this server's threshold")
        print(
            f"input         {contract.height}x{contract.width}, {contract.channels} channel: {contract.description}; "
            f"normalized as (x - {contract.normalization_mean:.4f}) / {contract.normalization_std:.4f}"
        )
    elif info.HasField("last_load_error"):
        print("no model can be served: the published model fails the checks every served model must pass (below)")
    else:
        print(
            "no model is served yet: the server is waiting for the trainer to publish one (if one is published, "
            "check the server's --artifacts-dir: its log names the folder it watches)"
        )
    print(
        f"accepts       {', '.join(contract.accepted_formats)}; up to {contract.max_image_bytes:,} bytes and "
        f"{contract.max_image_pixels:,} pixels per image, {contract.max_batch_size} images per batch"
    )
    if info.HasField("last_load_error"):
        e = info.last_load_error
        print(f"last skipped  model {e.version} at {e.at}: {e.reason}")
    return 0


def cmd_models(stub, args, call) -> int:
    response = call(stub.ListModels, pb.ListModelsRequest())
    if not response.models:
        print("no published models")
        return 0

    def percent(metrics, name: str) -> str:
        return f"{metrics[name]:.2%}" if name in metrics else "-"

    rows = [("", "version", "created (UTC)", "val acc", "test acc", "size", "sha256", "")]
    for m in response.models:
        rows.append(
            (
                "*" if m.served else "",
                m.version,
                m.created_at or "-",
                percent(m.metrics, "val_accuracy"),
                percent(m.metrics, "test_accuracy"),
                f"{m.size_bytes:,}",
                m.sha256[:12] or "-",
                m.problem,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(" ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"* served by this server: {response.served_version or 'none yet'}; pin another with --model-version")
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m inference.client",
        description="Ask the mnist-stack inference service to read handwritten digits.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--target",
        type=grpc_target,
        default=settings.env_value(settings.ENV_GRPC_TARGET, settings.DEFAULT_GRPC_TARGET, grpc_target),
        help="server address, host:port; dns:///host:port balances over every address of host; gRPC's other forms "
        f"(ipv4:, ipv6:, unix:) are passed on unchecked (env {settings.ENV_GRPC_TARGET})",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS, trusting the system's root certificates")
    parser.add_argument(
        "--tls-ca",
        type=ca_certificates_file,
        default=settings.env_value(ENV_TLS_CA, None, ca_certificates_file),
        help=f"use TLS, trusting this PEM CA certificate (env {ENV_TLS_CA})",
    )
    parser.add_argument(
        "--tls-server-name",
        default=None,
        help="expect this name in the server's certificate instead of the target's host",
    )
    # Default None rather than the env var's value, so --help never prints the secret; main() reads the env.
    parser.add_argument("--token", default=None, help=f"bearer token the server requires (env {ENV_AUTH_TOKEN})")
    parser.add_argument(
        "--timeout", type=positive_seconds, default=60.0, metavar="SECONDS", help="deadline of each call"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser("predict", help="read the digit in each image", formatter_class=HelpFormatter)
    predict.add_argument("images", nargs="+", type=Path, help="PNG, JPEG, BMP, GIF, WebP or TIFF files")
    predict.add_argument(
        "--preview",
        type=Path,
        default=None,
        help="save a picture of each image beside the 28x28 image the model saw (PNG; .jpg etc. by the name)",
    )
    predict.add_argument("--batch-size", type=int, default=32, help="images per PredictBatch call")
    predict.add_argument(
        "--model-version",
        default="",
        metavar="VERSION",
        help="a published version (see `models`) instead of the served one",
    )
    predict.set_defaults(run=cmd_predict)

    read = commands.add_parser(
        "read", help="read a handwritten number (one line of 1 to 12 digits)", formatter_class=HelpFormatter
    )
    read.add_argument("image", type=Path, help="PNG, JPEG, BMP, GIF, WebP or TIFF file")
    read.add_argument(
        "--preview",
        type=Path,
        default=None,
        help="save the picture with each digit's box and the number read (PNG; .jpg etc. by the name)",
    )
    read.add_argument(
        "--model-version",
        default="",
        metavar="VERSION",
        help="a published version (see `models`) instead of the served one",
    )
    read.set_defaults(run=cmd_read)

    evaluate = commands.add_parser("evaluate", help="score the served model on MNIST", formatter_class=HelpFormatter)
    evaluate.add_argument(
        "--split",
        choices=("test", "validation"),
        default="test",
        help="MNIST's test images, or the validation images the trainer held out of training",
    )
    evaluate.add_argument(
        "--out", type=Path, default=None, help="save the confusion-matrix heatmap here (PNG; .jpg etc. by the name)"
    )
    evaluate.add_argument(
        "--model-version",
        default="",
        metavar="VERSION",
        help="score this published version (see `models`), e.g. before promoting it",
    )
    evaluate.set_defaults(run=cmd_evaluate)

    info = commands.add_parser("info", help="describe the served model")
    info.set_defaults(run=cmd_info)
    models = commands.add_parser("models", help="list the published versions; * marks the served one")
    models.set_defaults(run=cmd_models)
    return parser


def unwritable(path: Path) -> str | None:
    """Why a file cannot be written at `path` (checked before the call, which may take a while), or None. Missing
    folders are made when it is written."""
    if path.is_dir():
        return "is a folder; name a file in it"
    return format_problem(path) or write_problem(path, is_file=True)


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if (problem := tls_flags_problem(args.tls, args.tls_ca, args.tls_server_name)) is not None:
        parser.error(problem)
    escape_unprintable_output()
    if getattr(args, "batch_size", 1) < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    if args.tls_ca is not None and not args.tls_ca.is_file():
        print(f"error: --tls-ca {args.tls_ca}: no such file", file=sys.stderr)
        return 1
    # Trimmed as the environment's value and the server's own token are: a token pasted with a space was refused.
    token = (args.token or "").strip() or settings.env_str(ENV_AUTH_TOKEN, "") or None
    if token is not None and not is_metadata_value(token):
        # gRPC metadata is printable ASCII: anything else fails every call with "Invalid metadata".
        print(
            f"error: the token (--token or {ENV_AUTH_TOKEN}) holds a character that is not printable ASCII "
            "(a newline within it, say: one at either end is trimmed); pass the token alone",
            file=sys.stderr,
        )
        return 2
    metadata = bearer_metadata(token)
    for flag in ("out", "preview"):
        if (path := getattr(args, flag, None)) is not None and (problem := unwritable(path)) is not None:
            print(f"error: --{flag} {path}: {problem}", file=sys.stderr)
            return 2
    connected = False

    def call(method, request):
        # The first call fails fast when nothing answers at --target (not started, a typo); once the server has
        # answered, later calls ride out a restart by waiting for it (waitForReady), up to --timeout.
        nonlocal connected
        response = method(request, timeout=args.timeout, metadata=metadata, wait_for_ready=connected)
        connected = True
        return response

    with make_channel(args.target, tls=args.tls, tls_ca=args.tls_ca, tls_server_name=args.tls_server_name) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        try:
            return args.run(stub, args, call)
        except grpc.RpcError as e:
            # A call that waited out --timeout for the server to come back (waitForReady) and one the server was too
            # slow to answer both end in DEADLINE_EXCEEDED with nothing from it: whether it answers now tells them
            # apart. Only once it had answered: a first call does not wait for it.
            went_away = connected and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not answers_now(channel)
            said = describe_rpc_error(e, args.target, token_sent=token is not None, went_away=went_away)
            print(f"error: {said}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # `mnist-client ... | head`: the reader has gone, and wants no more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor an error when Python flushes
            return 1
        except OSError as e:  # --out or --preview cannot be written
            print(f"error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
