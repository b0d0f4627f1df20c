"""Scoring whole numbers read (ReadNumber, shared.segment.read_number) against their truths, shared by
bench/bench_read_number.py and tests/inference/test_read_number.py. Each caller keeps its own targets.

    read = grpc_reader(stub)                          # or any read(bytes) -> str | None (None: refused)
    texts = [read(n.data) for n in numbers]           # numbers: testkit.numbers
    print(format_scores(score_by_style("apart", numbers, texts)))
    # What the classifier allows: how the model reads each number's digits on their own 28x28 MNIST images.
    print(format_ceiling(classifier_ceiling("apart", numbers, texts, own_probabilities, mnist_test_labels)))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Read = Callable[[bytes], "str | None"]  # an encoded picture -> the digits read, or None if it was refused


@dataclass(frozen=True)
class NumberScore:
    name: str
    numbers: int
    whole: int  # read exactly
    digits: int  # digits in the truths
    digit_errors: int  # edit distance, summed (a refused picture: all its digits)
    wrong_count: int  # read with another number of digits, or refused
    mistakes: tuple[tuple[str, str], ...]  # (truth, read) of the numbers read wrong

    @property
    def whole_accuracy(self) -> float:
        return self.whole / self.numbers if self.numbers else 0.0

    @property
    def digit_accuracy(self) -> float:
        return 1.0 - self.digit_errors / self.digits if self.digits else 0.0


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the digits inserted, deleted or substituted to turn `a` into `b`."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ca != cb))
    return row[-1]


def miscounted(truth: str, read: str | None) -> bool:
    """Read with another number of digits than the truth's, or refused."""
    return read is None or len(read) != len(truth)


def score_numbers(name: str, truths: Sequence[str], read: Sequence[str | None]) -> NumberScore:
    mistakes = tuple((t, r if r is not None else "refused") for t, r in zip(truths, read) if r != t)
    return NumberScore(
        name=name,
        numbers=len(truths),
        whole=sum(t == r for t, r in zip(truths, read)),
        digits=sum(len(t) for t in truths),
        digit_errors=sum(min(len(t), edit_distance(t, r)) if r is not None else len(t) for t, r in zip(truths, read)),
        wrong_count=sum(miscounted(t, r) for t, r in zip(truths, read)),
        mistakes=mistakes,
    )


def score_by_style(layout: str, pictures, read: Sequence[str | None]) -> list[NumberScore]:
    """One score per style, then the layout's total, named '<layout> <style>' and '<layout> all'."""
    scores = []
    for style in dict.fromkeys(p.style for p in pictures):
        chosen = [(p.digits, r) for p, r in zip(pictures, read) if p.style == style]
        scores.append(score_numbers(f"{layout} {style}", [t for t, _ in chosen], [r for _, r in chosen]))
    scores.append(score_numbers(f"{layout} all", [p.digits for p in pictures], list(read)))
    return scores


def format_scores(scores: Sequence[NumberScore]) -> str:
    lines = [f"{'layout and style':28s} {'numbers':>7s} {'whole':>8s} {'digits':>8s} {'count wrong':>11s}"]
    for s in scores:
        lines.append(f"{s.name:28s} {s.numbers:7d} {s.whole_accuracy:8.2%} {s.digit_accuracy:8.2%} {s.wrong_count:11d}")
    return "\n".join(lines)


# A digit the model reads right on MNIST's own image at under this probability is one it is unsure of there.
UNSURE_BELOW = 0.9


@dataclass(frozen=True)
class Ceiling:
    """What the classifier allows on a set of numbers made of MNIST test digits (testkit.numbers: each number's
    `sources` are its digits' indices in the test set), beside what was read.

    A number is *within reach* when the model reads every one of its digits right on that digit's own 28x28 MNIST
    image: no segmentation, however good, reads more than these, unless re-drawing a digit happens to mend it.
    Each digit misread in a number read with the right digit count is sorted by how the model reads the same
    digit's own image: wrong there too, right but unsure (top probability under UNSURE_BELOW), or right and
    sure; a misread among the sure ones is the pipeline's doing (segmentation, normalisation, the drawn style).
    A number read wrong is *the pipeline's* when its digit count came out wrong (or it was refused) or every digit
    it misread is a sure one: mending all of the pipeline's would read `score.whole + pipeline_only` numbers, no
    more."""

    score: NumberScore  # the same numbers scored as score_numbers does: read whole, with a wrong digit count
    within_reach: int  # every digit read right on its own MNIST image
    misread_wrong_there: int  # digits misread that the model misreads on their own image
    misread_unsure_there: int  # ... that it reads right there, but at under UNSURE_BELOW
    misread_sure_there: int  # ... that it reads right there at UNSURE_BELOW or more
    pipeline_only: int  # numbers read wrong with the wrong digit count, or whose every misread digit is a sure one


def classifier_ceiling(
    name: str, pictures, read: Sequence[str | None], own_probabilities: np.ndarray, labels: np.ndarray
) -> Ceiling:
    """`pictures`: testkit.numbers pictures (.digits, .sources); `read`: what was read of each (None: refused);
    `own_probabilities` (N, 10): the model's digit probabilities on the MNIST test images the sources index,
    `labels` (N,) their labels."""
    own_probabilities, labels = np.asarray(own_probabilities), np.asarray(labels)
    right_there = own_probabilities.argmax(axis=1) == labels
    sure_there = right_there & (own_probabilities.max(axis=1) >= UNSURE_BELOW)
    misread = {"wrong": 0, "unsure": 0, "sure": 0}
    pipeline_only = 0
    for picture, text in zip(pictures, read):
        if text == picture.digits:
            continue
        if miscounted(picture.digits, text):
            pipeline_only += 1
            continue
        kinds = [
            "sure" if sure_there[source] else "unsure" if right_there[source] else "wrong"
            for source, truth, got in zip(picture.sources, picture.digits, text)
            if truth != got
        ]
        for kind in kinds:
            misread[kind] += 1
        pipeline_only += all(kind == "sure" for kind in kinds)
    return Ceiling(
        score=score_numbers(name, [p.digits for p in pictures], read),
        within_reach=sum(bool(right_there[list(p.sources)].all()) for p in pictures),
        misread_wrong_there=misread["wrong"],
        misread_unsure_there=misread["unsure"],
        misread_sure_there=misread["sure"],
        pipeline_only=pipeline_only,
    )


def format_ceiling(ceiling: Ceiling) -> str:
    score = ceiling.score
    count = max(score.numbers, 1)  # an empty set reads as 0 %
    within, mended = ceiling.within_reach / count, (score.whole + ceiling.pipeline_only) / count
    return (
        f"{score.name}: read {score.whole_accuracy:.2%}; within the classifier's reach {within:.2%}"
        " (every digit read right on its own MNIST image)\n"
        f"  misread digits, by how the model reads their own MNIST image: wrong there {ceiling.misread_wrong_there}, "
        f"right at under {UNSURE_BELOW:g} {ceiling.misread_unsure_there}, right at {UNSURE_BELOW:g} or more "
        f"{ceiling.misread_sure_there}; numbers with the wrong digit count or refused {score.wrong_count}\n"
        f"  numbers read wrong by the pipeline's doing alone (a wrong digit count, or only sure digits misread) "
        f"{ceiling.pipeline_only}: with all of them mended, at most {mended:.2%} read"
    )


def grpc_reader(stub, timeout: float = 30.0) -> Read:
    import grpc

    from shared.api.mnist.v1 import inference_pb2 as pb

    def read(data: bytes) -> str | None:
        try:
            return stub.ReadNumber(pb.ReadNumberRequest(image=data), timeout=timeout).digits
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return None
            raise

    return read
