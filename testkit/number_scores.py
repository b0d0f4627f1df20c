"""Scoring whole numbers read (ReadNumber, shared.segment.read_number) against their truths, shared by
bench/bench_read_number.py and tests/inference/test_read_number.py. Each caller keeps its own targets.

    read = grpc_reader(stub)                          # or any read(bytes) -> str | None (None: refused)
    scores = score_by_style("apart", numbers, [read(n.data) for n in numbers])   # numbers: testkit.numbers
    print(format_scores(scores))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def score_numbers(name: str, truths: Sequence[str], read: Sequence[str | None]) -> NumberScore:
    mistakes = tuple((t, r if r is not None else "refused") for t, r in zip(truths, read) if r != t)
    return NumberScore(
        name=name,
        numbers=len(truths),
        whole=sum(t == r for t, r in zip(truths, read)),
        digits=sum(len(t) for t in truths),
        digit_errors=sum(min(len(t), edit_distance(t, r)) if r is not None else len(t) for t, r in zip(truths, read)),
        wrong_count=sum(r is None or len(r) != len(t) for t, r in zip(truths, read)),
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
