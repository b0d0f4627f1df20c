"""What every command line of the project shares."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where they would mislead: on/off switches ("(default: True)" on
    --no-publish) and settings left unset for the environment or a preset to decide ("(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.nargs == 0 or action.default is None:
            return action.help
        return super()._get_help_string(action)
