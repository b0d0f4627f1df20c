from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Split(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_UNSPECIFIED: _ClassVar[Split]
    SPLIT_TEST: _ClassVar[Split]
    SPLIT_VALIDATION: _ClassVar[Split]
SPLIT_UNSPECIFIED: Split
SPLIT_TEST: Split
SPLIT_VALIDATION: Split

class PredictRequest(_message.Message):
    __slots__ = ("image", "return_model_input", "model_version")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RETURN_MODEL_INPUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    return_model_input: bool
    model_version: str
    def __init__(self, image: _Optional[bytes] = ..., return_model_input: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("digit", "probabilities", "model_input_png", "is_digit", "digit_score")
    DIGIT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_INPUT_PNG_FIELD_NUMBER: _ClassVar[int]
    IS_DIGIT_FIELD_NUMBER: _ClassVar[int]
    DIGIT_SCORE_FIELD_NUMBER: _ClassVar[int]
    digit: int
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    model_input_png: bytes
    is_digit: bool
    digit_score: float
    def __init__(self, digit: _Optional[int] = ..., probabilities: _Optional[_Iterable[float]] = ..., model_input_png: _Optional[bytes] = ..., is_digit: _Optional[bool] = ..., digit_score: _Optional[float] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("prediction", "model_version")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    prediction: Prediction
    model_version: str
    def __init__(self, prediction: _Optional[_Union[Prediction, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class PredictBatchRequest(_message.Message):
    __slots__ = ("images", "return_model_input", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    RETURN_MODEL_INPUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    return_model_input: bool
    model_version: str
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., return_model_input: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class ImageError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("prediction", "error")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    prediction: Prediction
    error: ImageError
    def __init__(self, prediction: _Optional[_Union[Prediction, _Mapping]] = ..., error: _Optional[_Union[ImageError, _Mapping]] = ...) -> None: ...

class PredictBatchResponse(_message.Message):
    __slots__ = ("results", "model_version")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchResult]
    model_version: str
    def __init__(self, results: _Optional[_Iterable[_Union[BatchResult, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("split", "omit_heatmap", "model_version")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    OMIT_HEATMAP_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    split: Split
    omit_heatmap: bool
    model_version: str
    def __init__(self, split: _Optional[_Union[Split, str]] = ..., omit_heatmap: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class ClassMetrics(_message.Message):
    __slots__ = ("digit", "precision", "recall", "f1", "support")
    DIGIT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    digit: int
    precision: float
    recall: float
    f1: float
    support: int
    def __init__(self, digit: _Optional[int] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class ConfusionRow(_message.Message):
    __slots__ = ("counts",)
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, counts: _Optional[_Iterable[int]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("model_version", "split", "count", "accuracy", "loss", "per_class", "confusion", "heatmap_png", "seconds")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    split: Split
    count: int
    accuracy: float
    loss: float
    per_class: _containers.RepeatedCompositeFieldContainer[ClassMetrics]
    confusion: _containers.RepeatedCompositeFieldContainer[ConfusionRow]
    heatmap_png: bytes
    seconds: float
    def __init__(self, model_version: _Optional[str] = ..., split: _Optional[_Union[Split, str]] = ..., count: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., per_class: _Optional[_Iterable[_Union[ClassMetrics, _Mapping]]] = ..., confusion: _Optional[_Iterable[_Union[ConfusionRow, _Mapping]]] = ..., heatmap_png: _Optional[bytes] = ..., seconds: _Optional[float] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InputContract(_message.Message):
    __slots__ = ("height", "width", "channels", "description", "normalization_mean", "normalization_std", "accepted_formats", "max_image_bytes", "max_image_pixels", "max_batch_size", "max_message_bytes")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_MEAN_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_STD_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FORMATS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    description: str
    normalization_mean: float
    normalization_std: float
    accepted_formats: _containers.RepeatedScalarFieldContainer[str]
    max_image_bytes: int
    max_image_pixels: int
    max_batch_size: int
    max_message_bytes: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., description: _Optional[str] = ..., normalization_mean: _Optional[float] = ..., normalization_std: _Optional[float] = ..., accepted_formats: _Optional[_Iterable[str]] = ..., max_image_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class LoadError(_message.Message):
    __slots__ = ("version", "reason", "at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    version: str
    reason: str
    at: str
    def __init__(self, version: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("serving", "version", "arch", "arch_kwargs_json", "parameter_count", "sha256", "training_metrics", "run_name", "epoch", "trained_at", "loaded_at", "input", "last_load_error", "detects_not_digit", "digit_threshold")
    class TrainingMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SERVING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    ARCH_KWARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAINING_METRICS_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAINED_AT_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LAST_LOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    DETECTS_NOT_DIGIT_FIELD_NUMBER: _ClassVar[int]
    DIGIT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    version: str
    arch: str
    arch_kwargs_json: str
    parameter_count: int
    sha256: str
    training_metrics: _containers.ScalarMap[str, float]
    run_name: str
    epoch: int
    trained_at: str
    loaded_at: str
    input: InputContract
    last_load_error: LoadError
    detects_not_digit: bool
    digit_threshold: float
    def __init__(self, serving: _Optional[bool] = ..., version: _Optional[str] = ..., arch: _Optional[str] = ..., arch_kwargs_json: _Optional[str] = ..., parameter_count: _Optional[int] = ..., sha256: _Optional[str] = ..., training_metrics: _Optional[_Mapping[str, float]] = ..., run_name: _Optional[str] = ..., epoch: _Optional[int] = ..., trained_at: _Optional[str] = ..., loaded_at: _Optional[str] = ..., input: _Optional[_Union[InputContract, _Mapping]] = ..., last_load_error: _Optional[_Union[LoadError, _Mapping]] = ..., detects_not_digit: _Optional[bool] = ..., digit_threshold: _Optional[float] = ...) -> None: ...

class ReadNumberRequest(_message.Message):
    __slots__ = ("image", "return_model_input", "model_version")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RETURN_MODEL_INPUT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    return_model_input: bool
    model_version: str
    def __init__(self, image: _Optional[bytes] = ..., return_model_input: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x", "y", "width", "height")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    x: int
    y: int
    width: int
    height: int
    def __init__(self, x: _Optional[int] = ..., y: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class NumberDigit(_message.Message):
    __slots__ = ("box", "prediction")
    BOX_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    box: Box
    prediction: Prediction
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ...) -> None: ...

class Separator(_message.Message):
    __slots__ = ("position", "mark", "box")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    MARK_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    position: int
    mark: str
    box: Box
    def __init__(self, position: _Optional[int] = ..., mark: _Optional[str] = ..., box: _Optional[_Union[Box, _Mapping]] = ...) -> None: ...

class ReadNumberResponse(_message.Message):
    __slots__ = ("digits", "per_digit", "confidence", "separators", "model_version", "width", "height")
    DIGITS_FIELD_NUMBER: _ClassVar[int]
    PER_DIGIT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SEPARATORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    digits: str
    per_digit: _containers.RepeatedCompositeFieldContainer[NumberDigit]
    confidence: float
    separators: _containers.RepeatedCompositeFieldContainer[Separator]
    model_version: str
    width: int
    height: int
    def __init__(self, digits: _Optional[str] = ..., per_digit: _Optional[_Iterable[_Union[NumberDigit, _Mapping]]] = ..., confidence: _Optional[float] = ..., separators: _Optional[_Iterable[_Union[Separator, _Mapping]]] = ..., model_version: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "served", "metrics", "size_bytes", "sha256", "created_at", "arch", "run_name", "checksum_recorded", "problem")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    RUN_NAME_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_RECORDED_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    version: str
    served: bool
    metrics: _containers.ScalarMap[str, float]
    size_bytes: int
    sha256: str
    created_at: str
    arch: str
    run_name: str
    checksum_recorded: bool
    problem: str
    def __init__(self, version: _Optional[str] = ..., served: _Optional[bool] = ..., metrics: _Optional[_Mapping[str, float]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., created_at: _Optional[str] = ..., arch: _Optional[str] = ..., run_name: _Optional[str] = ..., checksum_recorded: _Optional[bool] = ..., problem: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "served_version")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    served_version: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., served_version: _Optional[str] = ...) -> None: ...
