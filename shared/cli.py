"""What every command line of the project shares."""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.settings import InvalidEnv, user_path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where they would mislead: on/off switches ("(default: True)" on
    --no-publish) and settings left unset for the environment or a preset to decide ("(default: None)", or
    "(default: )" for an empty string, as --model-version's: the served model)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or action.default is None or action.default == "":
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """The project's parser. A flag whose default came from an environment variable that holds an unusable value
    (settings.InvalidEnv) is refused here, after parsing, with the variable's name: not while the parser is built,
    which stopped even `--help`; and not at all when the flag itself was typed. Run as its console script
    (mnist-train, mnist-client, ...), a program's usage and errors name it so, not "python -m trainer"."""

    def __init__(self, prog: str | None = None, *args: Any, **kwargs: Any) -> None:
        script = Path(sys.argv[0]).name if sys.argv else ""
        if prog is not None and prog.startswith("python -m ") and script.startswith("mnist-"):
            prog = script
        super().__init__(prog, *args, **kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        parsed, extras = super().parse_known_args(args, namespace)
        for value in vars(parsed).values():
            if isinstance(value, InvalidEnv):
                self.error(value.message)
        return parsed, extras


def whole_number(text: str) -> int:
    """argparse type: a whole number, refused with a message that says so (argparse's own names the function)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def number(text: str, said: str) -> float:
    """float(text), or argparse's refusal saying what the flag takes (`said`): argparse names the type function
    of a ValueError ("invalid parse value: 'abc'")."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number {said}, got {text!r}") from None


def float_between(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """argparse type: a finite number in [low, high], the ends left out where open (math.inf: no upper end);
    refused with the range said."""
    lower = "above" if low_open else "at least"
    upper = "below" if high_open else "at most"
    said = f"{lower} {low:g}" + ("" if high == math.inf else f" and {upper} {high:g}")

    def parse(text: str) -> float:
        value = number(text, said)
        if (
            not math.isfinite(value)
            or not (value > low if low_open else value >= low)
            or not (value < high if high_open else value <= high)
        ):
            raise argparse.ArgumentTypeError(f"must be a number {said}, got {text!r}")
        return value

    return parse


# Counts and sizes end up in C ints (gRPC's and torch's settings) and in the proto's int32 fields: a larger one was
# taken at start and failed later, with a traceback or on every GetModelInfo.
MAX_COUNT = 2**31 - 1
# Durations end up in thread waits and gRPC deadlines, which overflow past about 9e9 s (a timestamp in ns).
MAX_SECONDS = 10_000_000.0  # about 116 days


def _at_most_max_count(value: int) -> int:
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT:,}, got {value:,}")
    return value


def _at_most_max_seconds(value: float, text: str) -> float:
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS:,.0f} seconds, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number from 1 to MAX_COUNT (`--epochs 0` is refused by the parser, with a message,
    not later)."""
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return _at_most_max_count(value)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number from 0 to MAX_COUNT."""
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return _at_most_max_count(value)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535 (0: any free one). A larger number was taken modulo 65536 by the
    socket layer (70000 listened on 4464) or ended in an OverflowError traceback."""
    value = whole_number(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan  # refused below with the caller's own message


def positive_seconds(text: str) -> float:
    """argparse type: a duration in seconds, finite and above 0 (a deadline of 0, -1 or nan fails every call)."""
    value = _seconds(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return _at_most_max_seconds(value, text)


def seconds_at_least(minimum: float) -> Callable[[str], float]:
    """argparse type: positive_seconds, and at least `minimum` (a benchmark's phase too short for one call to
    finish measured nothing)."""

    def seconds(text: str) -> float:
        value = positive_seconds(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g} seconds, got {text!r}")
        return value

    seconds.__name__ = f"seconds_at_least_{minimum:g}"
    return seconds


def non_negative_seconds(text: str) -> float:
    """argparse type: a duration in seconds, finite and 0 or more (a wait of 0: do not wait)."""
    value = _seconds(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more, got {text!r}")
    return _at_most_max_seconds(value, text)


def non_empty(text: str) -> str:
    """argparse type: text that is not empty or blank (an empty --host listened on every interface)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def folder(text: str) -> Path:
    """argparse type: a folder's path, not empty or blank, "~" expanded. An empty path is the working directory: a
    blank --artifacts-dir once wrote a training run's runs/, models/ and cache/ wherever the command was started;
    a quoted "~/data" made a folder named "~" there."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty: give a folder's path (. for this one)")
    return user_path(text)


def write_problem(path: Path, *, is_file: bool = False) -> str | None:
    """Why nothing can be written at `path`, or None: a folder (made with its missing folders when written), or
    with `is_file` a file, which may be there already (a preview written again) if this process may write it. The
    nearest of its folders that exists must be a folder this process may write in."""
    if is_file and path.is_file():
        return None if os.access(path, os.W_OK) else f"cannot write {path} (read-only, or not yours)"
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                return f"{existing} is a file, not a folder"
            if not os.access(existing, os.W_OK | os.X_OK):
                return f"cannot write in {existing} (read-only, or not yours)"
            return None
    return None


def escape_unprintable_output() -> None:
    """Print what the terminal's encoding cannot hold escaped, not as a crash: a file name that is not UTF-8
    (its bytes held as surrogates) once raised UnicodeEncodeError after the server had answered, under a locale
    whose stdout is strict."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
