"""The REST API's JSON shapes (which the OpenAPI document at /openapi.json shows), made from the gRPC messages.

Each shape mirrors a message of protos/mnist/v1/inference.proto, field for field, with three changes for people
reading JSON: images (the 28x28 input the model saw, the heatmap) are PNG data URLs, a split is a word
("test"), and the architecture's arguments are an object rather than a JSON string. Numbers are carried over
unchanged (a float32 probability is sent as the double it converts to exactly), so a REST answer holds the same
values as the gRPC answer it was made from.
"""

from __future__ import annotations

import base64
import json
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field

from shared.api.mnist.v1 import inference_pb2 as pb

SplitName = Literal["test", "validation"]
SPLITS: dict[SplitName, pb.Split] = {"test": pb.SPLIT_TEST, "validation": pb.SPLIT_VALIDATION}
SPLIT_WORDS: dict[int, SplitName] = {value: word for word, value in SPLITS.items()}


def png_data_url(png: bytes) -> str | None:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii") if png else None


class Error(BaseModel):
    status: int = Field(description="the HTTP status of this error", examples=[400])
    code: str = Field(description="the gRPC status the inference service gave", examples=["INVALID_ARGUMENT"])
    message: str = Field(description="what is wrong and what to do about it")


class ErrorResponse(BaseModel):
    error: Error


class DigitPrediction(BaseModel):
    digit: int = Field(ge=0, le=9, description="the most probable digit")
    probabilities: list[float] = Field(description="the probability of each digit 0..9; they sum to 1")
    is_digit: bool = Field(
        True,
        description="whether the picture is a digit at all (digit_score >= the server's "
        "threshold); false: show 'not a digit' (a letter, symbol, scribble or "
        "drawing); digit and probabilities are then only the best reading",
    )
    digit_score: float = Field(1.0, ge=0, le=1, description="how digit-like the picture is, 0..1 (docs/not-a-digit.md)")
    model_input: str | None = Field(
        None,
        description="the 28x28 grey image the model saw (ink bright on black), as a PNG data URL; "
        "null when model_input=false was asked",
    )

    @classmethod
    def from_pb(cls, prediction: pb.Prediction) -> DigitPrediction:
        return cls(**_fields(prediction))


class Prediction(DigitPrediction):
    model_version: str = Field(description="the version of the model that answered (models/<version>.pt)")

    @classmethod
    def from_response(cls, response: pb.PredictResponse) -> Prediction:
        return cls(**_fields(response.prediction), model_version=response.model_version)


def _fields(prediction: pb.Prediction) -> dict:
    return {
        "digit": prediction.digit,
        "probabilities": list(prediction.probabilities),
        "is_digit": prediction.is_digit,
        "digit_score": prediction.digit_score,
        "model_input": png_data_url(prediction.model_input_png),
    }


class ImageFailure(BaseModel):
    error: Error = Field(description="why this image has no prediction; the other images are unaffected")


class BatchPrediction(BaseModel):
    model_version: str = Field(description="the version of the model that answered every image of the batch")
    results: list[DigitPrediction | ImageFailure] = Field(description="one per image, in the order sent")


class InputContract(BaseModel):
    height: int
    width: int
    channels: int
    description: str
    normalization_mean: float
    normalization_std: float
    accepted_formats: list[str]
    max_image_bytes: int
    max_image_pixels: int
    max_batch_size: int
    max_message_bytes: int

    @classmethod
    def from_pb(cls, contract: pb.InputContract) -> InputContract:
        return cls(
            **{name: getattr(contract, name) for name in cls.model_fields if name != "accepted_formats"},
            accepted_formats=list(contract.accepted_formats),
        )


class LoadError(BaseModel):
    version: str
    reason: str
    at: str = Field(description="when it was skipped, UTC, ISO 8601")


class ModelInfo(BaseModel):
    serving: bool = Field(description="false until the first model is loaded; the model's fields are then empty")
    version: str = ""
    arch: str = Field("", description="architecture name (shared/model.py)")
    arch_kwargs: dict = Field(default_factory=dict, description="the architecture's arguments")
    parameter_count: int = 0
    sha256: str = ""
    training_metrics: dict[str, float] = Field(
        default_factory=dict, description="what the trainer recorded, e.g. val_accuracy"
    )
    run_name: str = ""
    epoch: int = 0
    trained_at: str = Field("", description="when the trainer wrote the model, UTC, ISO 8601")
    loaded_at: str = Field("", description="when the inference service loaded it, UTC, ISO 8601")
    input: InputContract
    last_load_error: LoadError | None = Field(None, description="the last newer model that failed to load")
    detects_not_digit: bool = Field(False, description="whether the model tells pictures that are not digits")
    digit_threshold: float = Field(0.0, description="is_digit is digit_score >= this (0 when the model cannot tell)")

    @classmethod
    def from_pb(cls, info: pb.ModelInfo) -> ModelInfo:
        error = info.last_load_error if info.HasField("last_load_error") else None
        return cls(
            serving=info.serving,
            version=info.version,
            arch=info.arch,
            arch_kwargs=json.loads(info.arch_kwargs_json) if info.arch_kwargs_json else {},
            parameter_count=info.parameter_count,
            sha256=info.sha256,
            training_metrics=dict(info.training_metrics),
            run_name=info.run_name,
            epoch=info.epoch,
            trained_at=info.trained_at,
            loaded_at=info.loaded_at,
            input=InputContract.from_pb(info.input),
            last_load_error=LoadError(version=error.version, reason=error.reason, at=error.at) if error else None,
            detects_not_digit=info.detects_not_digit,
            digit_threshold=info.digit_threshold,
        )


class ModelVersion(BaseModel):
    version: str
    served: bool = Field(description="whether calls without model_version use it now")
    metrics: dict[str, float] = Field(default_factory=dict, description="what the trainer recorded")
    size_bytes: int
    sha256: str
    created_at: str = Field("", description="when it was published, UTC, ISO 8601")
    arch: str = ""
    run_name: str = ""
    checksum_recorded: bool = Field(description="false for a version published before per-version manifests")
    problem: str = Field("", description="why the version cannot be read, if it cannot")


class ModelList(BaseModel):
    models: list[ModelVersion] = Field(description="newest first")
    served_version: str = Field("", description="empty before the first model is loaded")

    @classmethod
    def from_pb(cls, response: pb.ListModelsResponse) -> ModelList:
        return cls(
            served_version=response.served_version,
            models=[
                ModelVersion(
                    version=m.version,
                    served=m.served,
                    metrics=dict(m.metrics),
                    size_bytes=m.size_bytes,
                    sha256=m.sha256,
                    created_at=m.created_at,
                    arch=m.arch,
                    run_name=m.run_name,
                    checksum_recorded=m.checksum_recorded,
                    problem=m.problem,
                )
                for m in response.models
            ],
        )


class EvaluateRequest(BaseModel):
    # A misspelt key was ignored: {"splt": "validation"} evaluated the test split, and said nothing.
    model_config = ConfigDict(extra="forbid")

    split: Literal["test", "validation"] = Field(
        "test",
        description="the 10,000 MNIST test images, or the validation part of the training images as the "
        "served model's trainer split them",
    )
    heatmap: bool = Field(True, description="also draw the confusion matrix as a PNG (a few hundred ms)")
    model_version: str = Field(
        "", description="score this published version (GET /v1/models lists them); empty: the served one"
    )


class ClassMetrics(BaseModel):
    digit: int
    precision: float
    recall: float
    f1: float
    support: int = Field(description="images of this digit in the split")


class Evaluation(BaseModel):
    model_version: str
    split: Literal["test", "validation"]
    count: int = Field(description="images evaluated; the sum of the confusion matrix")
    accuracy: float
    loss: float = Field(description="mean negative log-likelihood")
    per_class: list[ClassMetrics] = Field(description="digits 0..9 in order")
    confusion: list[list[int]] = Field(
        description="confusion[true][predicted]: ten rows (true digits 0..9) of ten counts (predicted digits)"
    )
    heatmap: str | None = Field(
        description="the confusion matrix drawn as a heatmap, a PNG data URL; null when heatmap=false was asked"
    )
    seconds: float = Field(description="the evaluation's wall time on the inference service")

    @classmethod
    def from_pb(cls, response: pb.EvaluateResponse) -> Evaluation:
        return cls(
            model_version=response.model_version,
            split=SPLIT_WORDS[response.split],
            count=response.count,
            accuracy=response.accuracy,
            loss=response.loss,
            per_class=[
                ClassMetrics(digit=c.digit, precision=c.precision, recall=c.recall, f1=c.f1, support=c.support)
                for c in response.per_class
            ],
            confusion=[list(row.counts) for row in response.confusion],
            heatmap=png_data_url(response.heatmap_png),
            seconds=response.seconds,
        )


class Health(BaseModel):
    """No address of the inference service: probes need no token, and whoever can reach the gateway has no use for
    the network's layout behind it (app.NAMED_IN_THE_LOG); the gateway's log names it at start-up."""

    status: Literal["ok", "ready"]


# --------------------------------------------------------------------------------------------------------------
# ReadNumber: one line of 1-12 digits


class Box(BaseModel):
    """A rectangle in the picture's pixels as displayed (EXIF orientation applied): top-left corner and size."""

    x: int
    y: int
    width: int
    height: int

    @classmethod
    def from_pb(cls, box: pb.Box) -> Box:
        return cls(x=box.x, y=box.y, width=box.width, height=box.height)


class NumberDigit(DigitPrediction):
    box: Box = Field(description="where the digit's ink is in the picture")

    @classmethod
    def from_number_digit(cls, digit: pb.NumberDigit) -> NumberDigit:
        return cls(box=Box.from_pb(digit.box), **DigitPrediction.from_pb(digit.prediction).model_dump())


class Separator(BaseModel):
    position: int = Field(description='how many digits stand before it: "3.14" -> 1')
    mark: Literal[".", ","]
    box: Box

    @classmethod
    def from_pb(cls, separator: pb.Separator) -> Separator:
        mark = cast(Literal[".", ","], separator.mark)  # checked by pydantic against the field's Literal
        return cls(position=separator.position, mark=mark, box=Box.from_pb(separator.box))


class NumberReading(BaseModel):
    digits: str = Field(description='the digits read, left to right, separators left out, e.g. "314"', examples=["314"])
    per_digit: list[NumberDigit] = Field(description="one per character of `digits`, in the same order")
    confidence: float = Field(
        description="the probability that every digit is right: the product of each digit's probability"
    )
    separators: list[Separator] = Field(description="decimal points and commas, left to right; empty when none")
    model_version: str = Field(description="the version of the model that read every digit")
    width: int = Field(description="the picture's width as displayed, the frame of every box")
    height: int = Field(description="the picture's height as displayed")

    @classmethod
    def from_pb(cls, response: pb.ReadNumberResponse) -> NumberReading:
        return cls(
            digits=response.digits,
            per_digit=[NumberDigit.from_number_digit(d) for d in response.per_digit],
            confidence=response.confidence,
            separators=[Separator.from_pb(s) for s in response.separators],
            model_version=response.model_version,
            width=response.width,
            height=response.height,
        )
