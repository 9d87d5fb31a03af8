"""Atomic outputs and line-checked JSONL."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from slmops.core.errors import InputError


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` only if the block succeeds.

    A killed or failing stage leaves `target` as it was (or absent), never half-written. The temporary folder's
    name carries this process's id (.<name>.tmp-<pid>-<random>); on entry only those of processes that no longer
    run are removed, so processes writing beside each other (several ranks, two runs) keep theirs.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if not _process_alive(_writer_pid(stale.name)):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; outputs are meant to be shared and copied
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _writer_pid(name: str) -> int | None:
    """The process id in a temporary folder's name .<name>.tmp-<pid>-<random>; None for other names (older runs)."""
    pid = name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
    return int(pid) if pid.isdigit() and "-" in name.rsplit(".tmp-", 1)[1] else None


def _process_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def parse_json_object(text: str, where: str) -> dict:
    """The JSON object in `text`; InputError naming `where` (file and line, or file at a revision) otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Read a JSONL file; a malformed line or a record missing a required key names file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise InputError(f"{path}:{line}: not UTF-8 text ({err.reason})") from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may stand inside a string
        if not line.strip():
            continue
        row = parse_json_object(line, f"{path}:{number}")
        missing = [key for key in required if key not in row]
        if missing:
            raise InputError(f"{path}:{number}: missing key(s) {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no records")
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
