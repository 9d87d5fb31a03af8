"""One exception type for bad input, and the wrapper that turns it into exit code 2."""

from __future__ import annotations

import functools
import sys


class InputError(Exception):
    """Bad params, data or model input. The message names the key, file, line or record."""


def exits_2_on_input_error(main):
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
