"""The mnist.v1.Inference servicer: turns requests into tensors and tensors into responses.

Each call reads the served model once (`store.current`) and uses it to the end, so a hot swap never mixes
two models in one answer. Expected failures raise `RpcError` with a status code and a message that says what
to fix; anything else is a bug, logged with its traceback and returned as INTERNAL.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import grpc
import numpy as np
import torch

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc
from shared.budget import CallerGone
from shared.decode import displayed_size
from shared.fast_path import to_mnist_fast
from shared.image_pipeline import (
    ACCEPTED_FORMATS,
    BudgetExhausted,
    ImageRejected,
    Limits,
    MemoryBudget,
    OutOfMemory,
    decode_image,
    decodes_at_half_size,
    encode_png,
    to_mnist,
    to_mnist_array,
)
from shared.model import digit_log_probs, digit_scores, networks, segment_scores
from shared.segment import (
    CLASSIFY_AT_ONCE,
    Abandoned,
    Classified,
    Digit,
    NumberReading,
    read_number,
    reading_bytes,
    reading_for,
)

from inference import access_log
from inference.evaluation import EvaluationData, EvaluationDataError, evaluate_model
from inference.metrics import ServiceMetrics
from inference.model_store import ModelStore, ServedModel, UnknownVersion, VersionUnavailable
from inference.versions import is_missing, list_versions

log = logging.getLogger(__name__)

INPUT_DESCRIPTION = (
    "28x28 grey, ink bright on black, digit centred by its centre of mass as in MNIST; any encoded image is "
    "converted to this by shared.image_pipeline.to_mnist"
)
SPLIT_NAMES = {pb.SPLIT_UNSPECIFIED: "test", pb.SPLIT_TEST: "test", pb.SPLIT_VALIDATION: "validation"}
SPLIT_ENUMS = {"test": pb.SPLIT_TEST, "validation": pb.SPLIT_VALIDATION}


# The most of the decode budget one call's forward pass holds: 1/4 (80 MiB of the default 320; the compact
# network's 256 images take 97 MiB by shared.model.activation_bytes, so a full batch runs in two passes of 128).
FORWARD_SHARE = 4


@contextlib.contextmanager
def image_errors(metrics: ServiceMetrics):
    """A picture that cannot be read is the caller's INVALID_ARGUMENT (counted by reason in `metrics`); a server
    too busy to decode it is RESOURCE_EXHAUSTED (the picture may be fine)."""
    try:
        yield
    except ImageRejected as e:
        metrics.rejected(e)
        raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    except CallerGone as e:  # nobody reads this answer; said for the log
        raise RpcError(grpc.StatusCode.CANCELLED, str(e)) from None
    except (BudgetExhausted, OutOfMemory) as e:
        raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
    except MemoryError:  # past decoding (cleaning, segmenting): the server's state too, not the picture's fault
        raise RpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the server ran out of memory working on this picture; try again in a moment, or send a smaller one",
        ) from None


@contextlib.contextmanager
def one_of(slots: threading.BoundedSemaphore, busy: str, refused: Callable[[], None]) -> Iterator[None]:
    """Hold one of `slots` for the block; when none is free, RESOURCE_EXHAUSTED saying `busy`, at once (and
    `refused()` told): a call that waited for a slot would hold a worker thread doing nothing, the very thing the
    slots keep free."""
    if not slots.acquire(blocking=False):
        refused()
        raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, busy)
    try:
        yield
    finally:
        slots.release()


class RpcError(Exception):
    """An expected failure of one call: becomes this status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ServiceLimits:
    image: Limits
    # Decoded pictures in memory at once, across every call of this process (shared/budget.py).
    decode_budget: MemoryBudget
    max_batch_size: int
    max_message_bytes: int
    max_concurrent_evaluations: int
    max_concurrent_readings: int


def _rpc(method):
    """Map RpcError to its status and any other exception to INTERNAL; log one line per failed call."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except RpcError as e:
            log.info("%s -> %s: %s (model %s)", method.__name__, e.code.name, e.message, self.call_version())
            context.abort(e.code, e.message)
        except Exception:
            log.exception("%s -> INTERNAL (model %s)", method.__name__, self.call_version())
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; the server log has details")

    return wrapper


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    def __init__(
        self,
        store: ModelStore,
        evaluation_data: EvaluationData,
        limits: ServiceLimits,
        metrics: ServiceMetrics | None = None,
        digit_threshold: float | None = None,
    ) -> None:
        self.store = store
        # --digit-threshold: overrides every served model's own threshold; None keeps each model's.
        self.digit_threshold = digit_threshold
        self.evaluation_data = evaluation_data
        self.limits = limits
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        # Evaluate takes the CPU for a second or more: a few at a time, the rest are told to come back.
        self._evaluation_slots = threading.BoundedSemaphore(limits.max_concurrent_evaluations)
        # ReadNumber likewise (a reading made to be slow takes a second): the rest of the threads stay for others.
        self._reading_slots = threading.BoundedSemaphore(limits.max_concurrent_readings)
        # Set by InferenceServer.stop once the grace period is over: calls still running stop their work.
        self.stopped = threading.Event()

    def version_or_none(self) -> str:
        served = self.store.current
        return served.version if served is not None else "none"

    def call_version(self) -> str:
        """The model the current call used (a pinned model_version's, once resolved), else the served one."""
        record = access_log.current_call()
        return record.model_version if record is not None and record.model_version else self.version_or_none()

    def _model(self, version: str = "") -> ServedModel:
        """The served model, or the published `version` a call pinned."""
        try:
            served = self.store.model_for(version)
        except UnknownVersion:
            # The name is the caller's: quoted and cut short, so it cannot forge a log line or flood one.
            raise RpcError(
                grpc.StatusCode.NOT_FOUND,
                f"model version {version[:100]!r} is not published; leave model_version empty for the served "
                "model, or pick one that ListModels lists (mnist-client models)",
            ) from None
        except VersionUnavailable as e:
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, self._without_server_paths(str(e))) from None
        if served is None:
            failed = self.store.last_error
            if failed is not None:
                raise RpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"no model can be served: the published model {failed.version} fails the checks every served "
                    f"model must pass ({self._without_server_paths(failed.reason)[:300]}); publish or promote a "
                    "good one (mnist-models), and the server loads it within seconds",
                )
            # A mistyped --artifacts-dir (its models folder, not the folder above it) looked like a trainer still at
            # work: said apart, as the trainer makes the folder when it publishes its first model.
            missing = (
                "; its artifacts folder has no models/ folder at all: if a trained model should be there, the "
                "server's --artifacts-dir names the wrong folder (the one that holds models/)"
                if is_missing(self.store.models_dir)
                else ""
            )
            raise RpcError(
                grpc.StatusCode.UNAVAILABLE,
                "no model is published yet; the server is waiting for the trainer to publish one "
                f"(models/LATEST.json in its artifacts folder){missing}",
            )
        return served

    def _without_server_paths(self, text: str) -> str:
        """`text` with the server's models folder named `models/`: callers (the web page's visitors too) are told
        what is wrong, not where the server keeps its files; the server's log has the whole path."""
        folder = self.store.models_dir
        for prefix in sorted({str(folder.resolve()), str(folder)}, key=len, reverse=True):  # the longer first
            text = text.replace(prefix + "/", "models/").replace(prefix, "models/")
        return text

    def _decode(self, data: bytes, context) -> np.ndarray:
        with image_errors(self.metrics), self.limits.decode_budget.caller(context.is_active):
            return to_mnist(data, limits=self.limits.image, budget=self.limits.decode_budget)

    def _decode_all(self, items, context) -> list[np.ndarray | RpcError]:
        """Each image's 28x28 digit, or the RpcError that image gets, in order.

        The MNIST-like ones (28x28 grey PNGs) go through shared.fast_path together, which gives exactly what
        to_mnist gives; every other image, and any the fast path leaves undecided, through _decode alone. With the
        call's `context`, a caller that has gone (its deadline passed, or it cancelled) ends the work between two
        pictures, or while a picture waits for room in the decode budget: CANCELLED, rather than decoding a batch
        of large photos for no one.
        """
        fast = to_mnist_fast(items, self.limits.image)
        results: list[np.ndarray | RpcError] = []
        for data, digit in zip(items, fast):
            if digit is not None:
                results.append(digit)
                continue
            if not context.is_active():
                raise RpcError(
                    grpc.StatusCode.CANCELLED,
                    f"the caller went away (deadline passed or cancelled) after {len(results)} of {len(items)} "
                    "pictures; the rest were not decoded. Give large batches a longer deadline, or split them",
                )
            try:
                results.append(self._decode(data, context))
            except RpcError as e:
                if e.code == grpc.StatusCode.CANCELLED:  # gone while the picture waited for decoding memory
                    raise
                # Its code and message only: the error itself holds, through its traceback and the ImageRejected
                # it came from, the frames of the pipeline with their working arrays (tens of MiB for a large
                # picture), kept for the rest of the batch outside the decode budget.
                results.append(RpcError(e.code, e.message))
        return results

    def threshold(self, served: ServedModel) -> float | None:
        """The digit-score threshold `served` is used with; None for a model that cannot tell (no not-digit class)."""
        if served.digit_threshold is None:
            return None
        return self.digit_threshold if self.digit_threshold is not None else served.digit_threshold

    def _judge(self, served: ServedModel, output: torch.Tensor) -> list[tuple[bool, float]]:
        """(is_digit, digit_score) of each row of a network output: (True, 1.0) from a model without the class."""
        threshold = self.threshold(served)
        scores = digit_scores(output)
        if scores is None or threshold is None:
            return [(True, 1.0)] * len(output)
        return [(score >= threshold, score) for score in scores.tolist()]

    def _predictions(
        self, served: ServedModel, images: list[np.ndarray], with_input: bool, context
    ) -> list[pb.Prediction]:
        batch = torch.from_numpy(np.stack(images))  # (N, 28, 28) uint8
        # Its activations are held in the decode budget while the network runs, as a picture's decoding is: at most
        # 1/FORWARD_SHARE of the budget, a large network's batch run in passes of fewer images (a network 64 wide
        # held 387 MiB for 256 images, more than the default budget). Held for milliseconds, it takes room as soon
        # as there is room rather than wait behind a large picture that waits its turn (MemoryBudget.reserve).
        budget = self.limits.decode_budget
        at_once = min(len(images), served.images_at_once(budget.capacity // FORWARD_SHARE))
        forward = budget.reserve(
            served.forward_bytes(at_once),
            work=f"the network's forward pass over {at_once} image{'s' if at_once > 1 else ''}",
            to="",
            smaller=None,
            brief=True,
        )
        with image_errors(self.metrics), budget.caller(context.is_active), forward:
            output = served.log_probs(batch, at_once)
        probabilities = digit_log_probs(output).exp().tolist()
        judged = self._judge(served, output)
        return [
            pb.Prediction(
                digit=max(range(len(p)), key=p.__getitem__),
                probabilities=p,
                model_input_png=encode_png(image) if with_input else b"",
                is_digit=is_digit,
                digit_score=score,
            )
            for p, (is_digit, score), image in zip(probabilities, judged, images)
        ]

    @_rpc
    def Predict(self, request, context):
        served = self._model(request.model_version)
        access_log.note(image_bytes=len(request.image), images=1, model_version=served.version)
        # One wait for room in the decode budget for the whole call, its decoding and its forward pass together.
        with self.limits.decode_budget.caller(context.is_active):
            (image,) = self._decode_all([request.image], context)  # a caller already gone is not decoded for
            if isinstance(image, RpcError):
                # A new one: raising the one this frame holds would make a cycle (the frame, its error, the
                # error's traceback, the frame) that keeps the request until a full garbage collection.
                raise RpcError(image.code, image.message)
            (prediction,) = self._predictions(served, [image], request.return_model_input, context)
        self.metrics.predicted(1)
        return pb.PredictResponse(prediction=prediction, model_version=served.version)

    @_rpc
    def PredictBatch(self, request, context):
        count = len(request.images)
        access_log.note(image_bytes=sum(len(data) for data in request.images), images=count)
        # Refused before the model is looked up: a batch too large costs nothing to refuse, where a pinned version
        # would be loaded first (and might push another out of the cache) only to say so.
        if count > self.limits.max_batch_size:
            raise RpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{count} images in one call; the limit is {self.limits.max_batch_size}: split them into several calls",
            )
        served = self._model(request.model_version)
        access_log.note(model_version=served.version)
        images: list[np.ndarray] = []
        results: list[pb.BatchResult | None] = []
        for index, decoded in enumerate(self._decode_all(request.images, context)):
            if isinstance(decoded, RpcError):
                e = decoded
                log.info("PredictBatch image %d -> %s: %s (model %s)", index, e.code.name, e.message, served.version)
                results.append(pb.BatchResult(error=pb.ImageError(code=e.code.value[0], message=e.message)))
            else:
                images.append(decoded)
                results.append(None)  # filled in after the forward pass
        predictions = iter(self._predictions(served, images, request.return_model_input, context) if images else [])
        self.metrics.predicted(len(images))
        return pb.PredictBatchResponse(
            results=[r if r is not None else pb.BatchResult(prediction=next(predictions)) for r in results],
            model_version=served.version,
        )

    @_rpc
    def Evaluate(self, request, context):
        split = SPLIT_NAMES.get(request.split)
        if split is None:
            raise RpcError(
                grpc.StatusCode.INVALID_ARGUMENT, f"unknown split {request.split}; use SPLIT_TEST or SPLIT_VALIDATION"
            )
        busy = f"{self.limits.max_concurrent_evaluations} evaluation(s) already running; try again in a few seconds"
        # The slot is taken before the model is looked up: a refused call that pinned a version loaded it (and could
        # push another out of the cache) only to be told to come back.
        try:
            with one_of(self._evaluation_slots, busy, lambda: self.metrics.refused("evaluations")):
                served = self._model(request.model_version)
                access_log.note(model_version=served.version)
                result = evaluate_model(
                    served,
                    self.evaluation_data,
                    split,
                    heatmap=not request.omit_heatmap,
                    should_stop=lambda: self.stopped.is_set() or not context.is_active(),
                )
        except EvaluationDataError as e:
            log.warning("Evaluate: %s", e)  # where it looked and why it failed: for the operator, not the caller
            if self.evaluation_data.download:
                message = (
                    "the server cannot read the MNIST files it evaluates on, and could not download them; its "
                    "operator must put the four files in its data folder (--data-dir / MNIST_DATA_DIR) or let it "
                    "reach the internet (the server's log says where it looked and why)"
                )
            else:
                message = (
                    "the server cannot read the MNIST files it evaluates on; its operator must put the four files "
                    "in its data folder (--data-dir / MNIST_DATA_DIR) or start it with --download-data (the "
                    "server's log says where it looked)"
                )
            raise RpcError(grpc.StatusCode.FAILED_PRECONDITION, message) from None
        if result is None:  # the client cancelled or its deadline passed; nobody reads an answer
            raise RpcError(grpc.StatusCode.CANCELLED, "evaluation stopped: the call was cancelled")
        ev = result.evaluation
        self.metrics.evaluated(split)
        log.info(
            "Evaluate %s: accuracy %.4f on %d images in %.2f s (model %s)",
            split,
            ev.accuracy,
            ev.count,
            result.seconds,
            served.version,
        )
        return pb.EvaluateResponse(
            model_version=served.version,
            split=SPLIT_ENUMS[split],
            count=ev.count,
            accuracy=ev.accuracy,
            loss=ev.loss,
            per_class=[
                pb.ClassMetrics(
                    digit=d,
                    precision=float(ev.precision[d]),
                    recall=float(ev.recall[d]),
                    f1=float(ev.f1[d]),
                    support=int(ev.support[d]),
                )
                for d in range(len(ev.support))
            ],
            confusion=[pb.ConfusionRow(counts=[int(v) for v in row]) for row in ev.confusion],
            heatmap_png=result.heatmap_png,
            seconds=result.seconds,
        )

    @_rpc
    def ReadNumber(self, request, context):
        access_log.note(image_bytes=len(request.image), images=1)
        busy = (
            f"{self.limits.max_concurrent_readings} ReadNumber call(s) already running in this server process "
            "(--max-concurrent-readings); try again in a moment"
        )
        # Before the model is looked up, as for Evaluate: a refusal loads no pinned version.
        with one_of(self._reading_slots, busy, lambda: self.metrics.refused("readings")):
            return self._read_number(request, context)

    def _read_number(self, request, context):
        served = self._model(request.model_version)
        access_log.note(model_version=served.version)
        classify = JudgingClassifier(served, functools.partial(self._judge, served))
        # A new error each time: one this frame held and raised would make a cycle with its traceback (the frame,
        # the error, the traceback, the frame) that kept the request and the picture until a full collection.
        gone = functools.partial(
            RpcError, grpc.StatusCode.CANCELLED, "the caller went away (deadline passed or cancelled)"
        )
        with image_errors(self.metrics), self.limits.decode_budget.caller(context.is_active):
            picture = decode_image(request.image, limits=self.limits.image, budget=self.limits.decode_budget)
            width, height = displayed_size(request.image)
            if not context.is_active():  # the deadline passed while it was decoded: nobody reads the number
                raise gone()
            try:
                # Its working memory is held in the decode budget, as a decode's is: 16 zigzags read at once held
                # +0.5 GB beyond it. A long reading stops when its caller goes.
                with self.limits.decode_budget.reserve(reading_bytes(picture)), reading_for(context.is_active):
                    reading = read_number(picture, classify)
            except Abandoned:
                raise gone() from None
            if len(reading.digits) == 1 and not reading.separators:  # its second decode waits no longer either
                # Where Predict decodes the bytes at half size first, the picture decoded here is not held meanwhile.
                decoded = None if decodes_at_half_size(request.image) else picture
                del picture
                reading = self._one_digit_as_predict(request.image, decoded, reading, classify)
                if not context.is_active():
                    raise gone()
        # Each digit read also says how digit-like it is, as Predict does: from the forward pass that read it.
        judged = [classify.judged[d.image.tobytes()] for d in reading.digits]
        return number_response(reading, served.version, (width, height), request.return_model_input, judged)

    def _one_digit_as_predict(
        self, data: bytes, picture: np.ndarray | None, reading: NumberReading, classify: JudgingClassifier
    ) -> NumberReading:
        """A picture in which ReadNumber finds one digit (and no point or comma) is classified from the 28x28 digit
        Predict makes of it, so that both calls give the same answer. Predict reads a large picture at half
        resolution first and ReadNumber at full resolution: close probabilities, but where the model is torn
        between two digits either may come out on top (stop 30: 2 of the tests' 176 single digits with one test
        model). The box stays ReadNumber's. A picture Predict would refuse, or one the server is too busy (or short of
        memory) to decode again, keeps ReadNumber's own reading (and counts as no rejection: this call succeeded).

        `picture` is the decoded picture of `data` where to_mnist would decode it the same way (see
        shared.image_pipeline.decodes_at_half_size), reused rather than decoded again; None (a JPEG) is decoded
        again as Predict decodes it, at half size first."""
        try:
            if picture is not None:
                image = to_mnist_array(picture, self.limits.decode_budget)
            else:
                image = to_mnist(data, limits=self.limits.image, budget=self.limits.decode_budget)
        except (ImageRejected, BudgetExhausted, OutOfMemory, MemoryError):
            return reading
        (digit,) = reading.digits
        classified = classify(image[None])
        return replace(reading, digits=(Digit(digit.box, image, classified.probabilities[0]),))

    def input_contract(self, served: ServedModel | None) -> pb.InputContract:
        return pb.InputContract(
            height=28,
            width=28,
            channels=1,
            description=INPUT_DESCRIPTION,
            normalization_mean=served.mean if served else 0.0,
            normalization_std=served.std if served else 0.0,
            accepted_formats=ACCEPTED_FORMATS,
            max_image_bytes=self.limits.image.max_bytes,
            max_image_pixels=self.limits.image.max_pixels,
            max_batch_size=self.limits.max_batch_size,
            max_message_bytes=self.limits.max_message_bytes,
        )

    @_rpc
    def GetModelInfo(self, request, context):
        served = self.store.current
        error = self.store.last_error
        info = pb.ModelInfo(serving=served is not None, input=self.input_contract(served))
        if served is not None:
            info.MergeFrom(
                pb.ModelInfo(
                    version=served.version,
                    arch=served.arch,
                    arch_kwargs_json=json.dumps(served.arch_kwargs, sort_keys=True),
                    parameter_count=served.parameter_count,
                    sha256=served.sha256,
                    training_metrics=served.metrics,
                    run_name=served.run_name,
                    epoch=served.epoch,
                    trained_at=served.trained_at,
                    loaded_at=served.loaded_at,
                    detects_not_digit=served.digit_threshold is not None,
                    digit_threshold=self.threshold(served) or 0.0,
                )
            )
        if error is not None:
            reason = self._without_server_paths(error.reason)
            info.last_load_error.CopyFrom(pb.LoadError(version=error.version, reason=reason, at=error.at))
        return info

    @_rpc
    def ListModels(self, request, context):
        served = self.store.current
        served_version = served.version if served is not None else ""
        return pb.ListModelsResponse(
            models=[
                pb.ModelVersion(
                    version=info.manifest.version,
                    served=info.manifest.version == served_version,
                    metrics=info.manifest.metrics,
                    size_bytes=info.manifest.size,
                    sha256=info.manifest.sha256,
                    created_at=info.manifest.created_at,
                    arch=info.manifest.arch,
                    run_name=info.manifest.run_name,
                    checksum_recorded=info.recorded,
                    problem=self._without_server_paths(info.problem),
                )
                for info in list_versions(self.store.models_dir)
            ],
            served_version=served_version,
        )


class JudgingClassifier:
    """read_number's classifier on a served model: (N, 28, 28) uint8 -> their digit probabilities and the scores its
    cuts weigh (shared.model.segment_scores). It also keeps each image's served (is_digit, digit_score) from the same
    forward pass, by its bytes, so the digits read are judged without running the network on them again (the
    whole groups and the halves of cuts are all classified)."""

    def __init__(self, served: ServedModel, judge: Callable[[torch.Tensor], list[tuple[bool, float]]]) -> None:
        self.served = served
        self.judge = judge  # the network's output (N, 10, 11 or 12) -> (is_digit, digit_score) of each row
        self.judged: dict[bytes, tuple[bool, float]] = {}
        # The reading's reservation counts one network's batch of CLASSIFY_AT_ONCE (shared.segment's
        # READING_BASE_BYTES); an ensemble's members each hold their own activations, so it takes fewer at a time.
        self.at_once = max(1, CLASSIFY_AT_ONCE // len(networks(served.model)))

    def __call__(self, batch: np.ndarray) -> Classified:
        output = self.served.log_probs(torch.from_numpy(batch), self.at_once)
        judged = self.judge(output)
        self.judged.update(zip((image.tobytes() for image in batch), judged))
        return Classified(digit_log_probs(output).exp().numpy(), segment_scores(output))


def number_response(
    reading: NumberReading,
    version: str,
    size: tuple[int, int],
    with_input: bool,
    judged: list[tuple[bool, float]] | None = None,
) -> pb.ReadNumberResponse:
    """A reading at working resolution -> the response, boxes in the picture's own pixels (size: as displayed)."""
    work_width, work_height = reading.work_size
    sx, sy = size[0] / work_width, size[1] / work_height

    def box(b: tuple[int, int, int, int]) -> pb.Box:
        x, y, w, h = b  # outwards to whole pixels, so the box still holds all the ink
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = min(size[0], int(np.ceil((x + w) * sx))), min(size[1], int(np.ceil((y + h) * sy)))
        return pb.Box(x=x0, y=y0, width=x1 - x0, height=y1 - y0)

    judged = judged or [(True, 1.0)] * len(reading.digits)  # (is_digit, digit_score) of each digit
    return pb.ReadNumberResponse(
        digits=reading.text,
        per_digit=[
            pb.NumberDigit(
                box=box(d.box),
                prediction=pb.Prediction(
                    digit=d.digit,
                    probabilities=d.probabilities.tolist(),
                    model_input_png=encode_png(d.image) if with_input else b"",
                    is_digit=is_digit,
                    digit_score=score,
                ),
            )
            for d, (is_digit, score) in zip(reading.digits, judged)
        ],
        confidence=reading.confidence,
        separators=[pb.Separator(position=s.position, mark=s.mark, box=box(s.box)) for s in reading.separators],
        model_version=version,
        width=size[0],
        height=size[1],
    )
