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
