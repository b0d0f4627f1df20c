"""shared/settings.py: where MNIST is looked for when nothing says, and what a missing home folder does to that."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shared import settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def no_home():
    raise RuntimeError("Could not determine home directory.")


def test_mnist_is_looked_for_in_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(settings.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert settings.data_dir() == tmp_path / "mnist-stack" / "mnist"
    monkeypatch.setenv(settings.ENV_DATA_DIR, str(tmp_path / "here"))
    assert settings.data_dir() == tmp_path / "here"


def test_without_a_home_folder_the_variable_is_used_and_the_default_is_the_temporary_folder(monkeypatch, tmp_path):
    """No HOME and no passwd entry (an arbitrary user id in a container): Path.home() raises, which stopped every
    command as its parser was built, --help included, even with MNIST_DATA_DIR set."""
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.setenv(settings.ENV_DATA_DIR, str(tmp_path))
    assert settings.data_dir() == tmp_path
    monkeypatch.delenv(settings.ENV_DATA_DIR)
    assert settings.data_dir() == Path(tempfile.gettempdir()) / "mnist-stack" / "mnist"


@pytest.mark.parametrize("module", ["trainer", "inference"])
def test_help_works_without_a_home_folder(module):
    # HOME unset; the passwd lookup made to fail as it does for a user id with no entry.
    code = (
        "import pwd, runpy, sys\n"
        "def missing(uid): raise KeyError(uid)\n"
        "pwd.getpwuid = missing\n"
        f"sys.argv = ['{module}', '--help']\n"
        f"runpy.run_module('{module}', run_name='__main__')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_a_tilde_in_a_folder_from_the_environment_or_a_flag_is_the_home_folder(monkeypatch, tmp_path):
    """MNIST_DATA_DIR='~/mnistdata' (quoted in an .env file, so no shell expands it) made a folder named "~" in the
    working directory, where MNIST would have been downloaded; --data-dir '~/x' too."""
    from shared.cli import folder

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(settings.ENV_DATA_DIR, "~/mnistdata")
    monkeypatch.setenv(settings.ENV_ARTIFACTS_DIR, "~/artifacts")
    assert settings.data_dir() == tmp_path / "mnistdata"
    assert settings.artifacts_dir() == tmp_path / "artifacts"
    assert folder("~/x") == tmp_path / "x"


def test_a_program_run_as_its_console_script_names_itself_so(monkeypatch):
    """`mnist-train --bogus` said "python -m trainer: error: ..." (a review's): run as a console script, the usage
    and errors name the script; run with python -m, the module, as before."""
    from trainer.config import get_args_parser

    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/mnist-train", "--bogus"])
    assert get_args_parser().prog == "mnist-train"
    monkeypatch.setattr(sys, "argv", ["/work/trainer/__main__.py"])
    assert get_args_parser().prog == "python -m trainer"


def test_a_home_that_cannot_be_found_is_refused_in_one_line_and_help_still_works(monkeypatch, capsys):
    """~nosuchuser/x (or ~ with no HOME and no passwd entry, in a container) raised RuntimeError from
    Path.expanduser: a traceback, even for --help with the variable set (a review's)."""
    from trainer.config import get_args_parser

    monkeypatch.setenv(settings.ENV_ARTIFACTS_DIR, "~nosuchuser-mnist/x")
    with pytest.raises(SystemExit) as shown:
        get_args_parser().parse_args(["--help"])
    assert shown.value.code == 0
    with pytest.raises(SystemExit) as refused:
        get_args_parser().parse_args([])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "MNIST_ARTIFACTS_DIR" in err and "~nosuchuser-mnist: no such home" in err
