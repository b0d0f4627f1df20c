"""shared/metrics.py: the pictures of an evaluation."""

from __future__ import annotations

import numpy as np
import torch

from shared.metrics import confusion_figure, confusion_heatmap_png, evaluation_from_log_probs


def test_heatmap_title_with_a_long_model_version_stays_inside_the_picture():
    version = "20261130-045301-default-compact-s0-e015-with-a-long-suffix-a-user-chose-for-this-run"
    confusion = np.diag(np.full(10, 100)).astype(np.int64)
    fig = confusion_figure(confusion, title=f"Model {version}, test")
    fig.canvas.draw()
    title = fig.axes[0].title
    box = title.get_window_extent(renderer=fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox)
    assert version.replace("-", "") in title.get_text().replace("\n", "").replace("-", "").replace(" ", "")


def test_heatmap_png_is_a_png():
    assert confusion_heatmap_png(np.eye(10, dtype=np.int64)).startswith(b"\x89PNG")


def test_per_class_scores_and_confusion_from_predictions():
    import torch

    from shared.metrics import evaluation_from_log_probs

    # ten 0s: eight right, two taken for 1s; three 1s, all right; one 2 taken for a 1, nothing predicted 2
    truth = [0] * 10 + [1] * 3 + [2]
    predicted = [0] * 8 + [1] * 2 + [1] * 3 + [1]
    log_probs = torch.log(torch.nn.functional.one_hot(torch.tensor(predicted), 10).float() * 0.9 + 0.01)
    evaluation = evaluation_from_log_probs(log_probs, torch.tensor(truth))
    np.testing.assert_allclose(evaluation.precision[:3], [1.0, 3 / 6, 0.0])
    np.testing.assert_allclose(evaluation.recall[:3], [8 / 10, 1.0, 0.0])
    np.testing.assert_allclose(evaluation.f1[:3], [2 * 8 / 18, 2 * 3 / 9, 0.0])
    assert evaluation.support.tolist() == [10, 3, 1] + [0] * 7
    assert (evaluation.precision[3:] == 0).all() and (evaluation.f1[3:] == 0).all()  # no image: 0, not NaN
    assert evaluation.confusion[0, 1] == 2 and evaluation.confusion[2, 1] == 1 and evaluation.count == 14
    assert evaluation.accuracy == 11 / 14


def test_a_heatmap_drawn_again_is_the_same_picture():
    """Kept by its matrix and title, which is sound only because drawing is deterministic: drawn twice, with the
    cache cleared between, the bytes are the same."""
    from shared.metrics import _heatmap_png

    confusion = np.diag(np.arange(10)).astype(np.int64)
    assert confusion_heatmap_png(confusion, title="t") is confusion_heatmap_png(confusion.copy(), title="t")  # kept
    first = confusion_heatmap_png(confusion, title="t")
    _heatmap_png.cache_clear()
    assert confusion_heatmap_png(confusion, title="t") == first  # drawn again
    assert confusion_heatmap_png(confusion, title="t") != confusion_heatmap_png(confusion, title="u")


def test_nothing_to_score_gives_zeros_not_an_error():
    evaluation = evaluation_from_log_probs(torch.empty(0, 10), torch.empty(0, dtype=torch.long))
    assert evaluation.count == 0 and evaluation.accuracy == 0.0 and evaluation.loss == 0.0
    assert evaluation.confusion.shape == (10, 10) and evaluation.support.sum() == 0 and len(evaluation.predictions) == 0


def test_heatmap_title_with_dollar_signs_in_the_model_version_is_drawn_as_written():
    """A version may hold $ (run names allow it): matplotlib read "exp$^$1" as broken maths, and Evaluate failed as
    INTERNAL; "run$5$x" was drawn as "run5x"."""
    for version in ("exp$^$1-e001", r"a$\frac$b-e001", "run$5$x-e001"):
        assert confusion_heatmap_png(np.eye(10, dtype=np.int64), title=f"Model {version}, test").startswith(b"\x89PNG")
        fig = confusion_figure(np.eye(10, dtype=np.int64), title=f"Model {version}, test")
        fig.canvas.draw()
        # Its drawn width is that of the text with the $ signs as characters, not of maths without them.
        title = fig.axes[0].title
        plain = fig.axes[0].text(0, 0, title.get_text(), fontsize=10, parse_math=False)
        renderer = fig.canvas.get_renderer()
        assert title.get_window_extent(renderer).width == plain.get_window_extent(renderer).width
