"""argparse value types shared by the command-line tools."""
from __future__ import annotations

import argparse


def size(text: str) -> tuple[int, int]:
    """'640x480' -> (640, 480)."""
    first, sep, second = text.lower().partition("x")
    if not (sep and first.isdigit() and second.isdigit() and int(first) > 0 and int(second) > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not two positive integers like 640x480")
    return int(first), int(second)


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def natural(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative integer")
    return int(text)
