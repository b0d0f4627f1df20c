"""Where the tests find MNIST (tests/conftest.py): the README's `make test` after `make stack`, on a machine
without a copy beside the checkout, found none (make stack downloads into the user's cache)."""

from __future__ import annotations

from pathlib import Path

from shared import settings

from tests.conftest import DEFAULT_TEST_DATA_DIR, mnist_dir_candidates


def test_without_mnist_data_dir_the_tests_look_beside_the_checkout_then_where_make_stack_downloads(
    monkeypatch, tmp_path
):
    monkeypatch.delenv(settings.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert mnist_dir_candidates() == [DEFAULT_TEST_DATA_DIR, settings.default_data_dir()]
    assert settings.default_data_dir().is_relative_to(tmp_path / "cache")


def test_mnist_data_dir_when_set_is_the_only_place_looked(monkeypatch, tmp_path):
    monkeypatch.setenv(settings.ENV_DATA_DIR, str(tmp_path / "mine"))
    assert mnist_dir_candidates() == [Path(tmp_path / "mine")]
