"""Options common to every sub-command of a tool, accepted before and after the sub-command.

`enroll_local.py --db X add ...` and `enroll_local.py add --db X ...` mean the same. argparse
alone accepts an option only where it is defined, and a sub-command's own default would
overwrite a value given before it; so the top parser defines the options with their
defaults, and each sub-command gets a copy whose defaults are SUPPRESS: a value given before
the sub-command then survives, and one given after it wins.
"""
from __future__ import annotations

import argparse
from typing import Callable

# define(parser, before): add the common options to parser; before is True for the top
# parser (real defaults) and False for the sub-commands' copy (default=argparse.SUPPRESS).
Define = Callable[[argparse.ArgumentParser, bool], None]


def common_options(top: argparse.ArgumentParser, define: Define) -> argparse.ArgumentParser:
    """Define the common options on top; returns the parent parser to give each sub-command."""
    define(top, True)
    common = argparse.ArgumentParser(add_help=False)
    define(common, False)
    return common


def default(value: object, before: bool) -> object:
    """The default for an option's copy: its own on the top parser, SUPPRESS after the sub-command."""
    return value if before else argparse.SUPPRESS
