"""shared/metrics.py: the pictures of an evaluation."""

from __future__ import annotations

import numpy as np

from shared.metrics import confusion_figure, confusion_heatmap_png


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


def test_per_class_scores_from_a_confusion_matrix():
    from shared.metrics import per_class_scores

    confusion = np.zeros((10, 10), np.int64)
    confusion[0, 0], confusion[0, 1] = 8, 2  # ten 0s: eight right, two taken for 1s
    confusion[1, 1] = 3  # three 1s, all right
    confusion[2, 1] = 1  # one 2 taken for a 1; nothing predicted 2
    precision, recall, f1, support = per_class_scores(confusion)
    np.testing.assert_allclose(precision[:3], [1.0, 3 / 6, 0.0])
    np.testing.assert_allclose(recall[:3], [8 / 10, 1.0, 0.0])
    np.testing.assert_allclose(f1[:3], [2 * 8 / 18, 2 * 3 / 9, 0.0])
    assert support.tolist() == [10, 3, 1] + [0] * 7
    assert (precision[3:] == 0).all() and (f1[3:] == 0).all()  # no image, no prediction: 0, not NaN


def test_a_heatmap_drawn_again_is_the_same_picture():
    confusion = np.diag(np.arange(10)).astype(np.int64)
    assert confusion_heatmap_png(confusion, title="t") is confusion_heatmap_png(confusion.copy(), title="t")
    assert confusion_heatmap_png(confusion, title="t") != confusion_heatmap_png(confusion, title="u")
