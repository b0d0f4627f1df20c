"""Accuracy per style on users' pictures (testkit/user_images.py), shared by bench/bench_user_images.py and
tests/inference/test_user_drawings.py. Each caller brings its own targets.

    scores = evaluate_styles(predict, pictures, targets=lambda style: 0.98)
    print(format_report(scores)); missed = missed_targets(scores)

`predict` is any `predict(list[bytes]) -> list[digit or None]` (None = the picture was rejected, which counts
as wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from testkit.user_images import UserImage

Predict = Callable[[Sequence[bytes]], list]  # encoded pictures -> predicted digit (int) or None if rejected
Targets = Callable[[str], "float | None"]  # a style's name -> its target accuracy, or None for none


@dataclass(frozen=True)
class StyleScore:
    style: str
    correct: int
    total: int
    rejected: int  # pictures the pipeline refused (counted as wrong)
    confusions: dict[tuple[int, int], int]  # (true, predicted) -> count, mistakes only
    target: float | None = None  # the accuracy this style should reach, if any

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def evaluate_styles(
    predict: Predict,
    pictures: Sequence[UserImage],
    *,
    targets: Targets | None = None,
    batch_size: int = 64,
    concurrency: int = 1,
) -> dict[str, StyleScore]:
    """Run `predict` over the pictures in batches, `concurrency` batches at a time, and score each style, with its
    target from `targets` (none if that is None). Returns {style: StyleScore} in order."""
    batches = [[p.data for p in pictures[start : start + batch_size]] for start in range(0, len(pictures), batch_size)]
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        predictions = [digit for batch in pool.map(predict, batches) for digit in batch]
    scores = {}
    for style in dict.fromkeys(p.style for p in pictures):
        pairs = [(p.label, q) for p, q in zip(pictures, predictions) if p.style == style]
        confusions: dict[tuple[int, int], int] = {}
        for label, predicted in pairs:
            if predicted is not None and predicted != label:
                confusions[(label, predicted)] = confusions.get((label, predicted), 0) + 1
        scores[style] = StyleScore(
            style=style,
            correct=sum(label == predicted for label, predicted in pairs),
            total=len(pairs),
            rejected=sum(predicted is None for _, predicted in pairs),
            confusions=confusions,
            target=targets(style) if targets is not None else None,
        )
    return scores


def format_report(scores: dict[str, StyleScore]) -> str:
    header = f"{'style':20s} {'accuracy':>9s} {'correct':>9s} {'rejected':>8s}  target"
    lines = [header + "  most common mistakes (true->predicted)"]
    for score in scores.values():
        target = f"{score.target:.0%}" if score.target is not None else "-"
        flag = "" if score.target is None else ("ok  " if score.accuracy >= score.target else "MISS")
        common = sorted(score.confusions.items(), key=lambda kv: -kv[1])[:4]
        mistakes = ", ".join(f"{t}->{p} x{n}" for (t, p), n in common)
        counts = f"{score.correct:4d}/{score.total:<4d} {score.rejected:8d}"
        lines.append(f"{score.style:20s} {score.accuracy:9.2%} {counts}  {target:>4s} {flag} {mistakes}")
    return "\n".join(lines)


def missed_targets(scores: dict[str, StyleScore]) -> list[str]:
    return [s.style for s in scores.values() if s.target is not None and s.accuracy < s.target]
