"""One exception type for bad input, and the entry-point wrapper that turns it into exit code 2."""

from __future__ import annotations

import functools
import logging
import sys

log = logging.getLogger("slmops")


class InputError(Exception):
    """Bad params, data or model input. The message names the key, file, line or record."""


def validation_problems(err, where, prefix: tuple[str, ...] = ()) -> list[str]:
    """One `<where>: <dotted key>: <what is wrong>` line per error of a pydantic ValidationError `err`, each key
    under `prefix` (the section the validated mapping sits in)."""
    lines = []
    for e in err.errors():
        key = ".".join(map(str, (*prefix, *e["loc"]))) or "(top level)"
        message = "expected a mapping" if e["type"] == "model_type" else e["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {key}: {message}")
    return lines


def configure_logging() -> None:
    """Progress and results of slmops and the stages on stderr (INFO); other libraries' warnings only."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    for name in ("slmops", "stages"):
        logging.getLogger(name).setLevel(logging.INFO)


def exits_2_on_input_error(main):
    """Wrap a stage's main(): logging configured; an InputError is logged as `error: ...` and exits with code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        configure_logging()
        try:
            return main(*args, **kwargs)
        except InputError as err:
            log.error("error: %s", err)
            sys.exit(2)

    return wrapper
