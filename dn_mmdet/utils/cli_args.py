"""Argument types of the tools' command lines, with usage errors that
name the option and the value (argparse prefixes ``argument --name:``)."""

import argparse


def int_at_least(minimum):
    """An argparse ``type``: a whole number >= ``minimum``.

    Example::

        parser.add_argument('--threads', type=int_at_least(1))
        # --threads 0 -> "argument --threads: expected a whole number
        # >= 1, got '0'"
    """

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f'expected a whole number >= {minimum}, got {text!r}'
            )
        return value

    parse.__name__ = f'int >= {minimum}'
    return parse


#: A whole number >= 1 (threads, runs, repeats).
positive_int = int_at_least(1)
#: A whole number >= 0 (warm-up steps).
nonnegative_int = int_at_least(0)
