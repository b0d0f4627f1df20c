"""testkit/number_scores.py: what the classifier allows on numbers made of MNIST digits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testkit.number_scores import UNSURE_BELOW, classifier_ceiling, format_ceiling


@dataclass(frozen=True)
class Number:  # the two fields of testkit.numbers.NumberPicture the ceiling reads
    digits: str
    sources: tuple[int, ...]


# Six MNIST "test images" and how a model reads them on their own: 0-2 right and sure, 3 right but unsure,
# 4 wrong (a 4 read as a 9), 5 right and sure.
LABELS = np.array([1, 2, 3, 7, 4, 5])
OWN = np.full((6, 10), 0.0)
OWN[[0, 1, 2, 5], LABELS[[0, 1, 2, 5]]] = 1.0
OWN[3, 7], OWN[3, 1] = UNSURE_BELOW - 0.2, 1.1 - UNSURE_BELOW
OWN[4, 9], OWN[4, 4] = 0.7, 0.3


def ceiling_of(numbers, read):
    return classifier_ceiling("apart", numbers, read, OWN, LABELS)


def test_a_number_is_within_reach_only_when_every_digit_is_read_right_on_its_own_image():
    numbers = [Number("123", (0, 1, 2)), Number("17", (0, 3)), Number("14", (0, 4)), Number("5", (5,))]
    ceiling = ceiling_of(numbers, [n.digits for n in numbers])
    assert (ceiling.score.numbers, ceiling.score.whole) == (4, 4)
    assert ceiling.within_reach == 3  # "14": its 4 is read as a 9 on its own image, however it was written


def test_each_misread_digit_is_sorted_by_how_its_own_image_is_read():
    numbers = [Number("123", (0, 1, 2)), Number("17", (0, 3)), Number("14", (0, 4)), Number("125", (0, 1, 5))]
    numbers.append(Number("172", (0, 3, 1)))
    ceiling = ceiling_of(numbers, ["128", "11", "19", "725", "118"])
    assert ceiling.score.whole == 0
    assert ceiling.misread_sure_there == 3  # the 3 of "123", the 1 of "125" and the 2 of "172"
    assert ceiling.misread_unsure_there == 2  # the 7 of "17" and of "172"
    assert ceiling.misread_wrong_there == 1  # the 4 of "14"
    assert ceiling.score.wrong_count == 0
    # "123" and "125" misread only digits the model reads surely on their own: the pipeline's doing. "172" also
    # misread its unsure 7, which the best pipeline might misread too.
    assert ceiling.pipeline_only == 2


def test_a_refused_number_or_one_with_another_digit_count_is_counted_apart_and_none_of_its_digits_sorted():
    numbers = [Number("123", (0, 1, 2)), Number("14", (0, 4)), Number("5", (5,))]
    ceiling = ceiling_of(numbers, [None, "149", "5"])
    assert (ceiling.score.whole, ceiling.score.wrong_count, ceiling.pipeline_only) == (1, 2, 2)
    assert ceiling.misread_sure_there + ceiling.misread_unsure_there + ceiling.misread_wrong_there == 0


def test_the_printed_ceiling_gives_both_shares_and_every_count():
    numbers = [Number("17", (0, 3)), Number("14", (0, 4))]
    text = format_ceiling(ceiling_of(numbers, ["17", "19"]))
    assert text.startswith("apart: read 50.00%; within the classifier's reach 50.00%")
    assert "wrong there 1, right at under 0.9 0, right at 0.9 or more 0" in text
    assert "wrong digit count or refused 0" in text
    assert "the pipeline's doing alone (a wrong digit count, or only sure digits misread) 0" in text
    assert "with all of them mended, at most 50.00% read" in text


def test_an_empty_set_reads_as_nothing_rather_than_failing():
    assert format_ceiling(ceiling_of([], [])).startswith("apart: read 0.00%; within the classifier's reach 0.00%")
