import os

import pytest

from slmops.core.errors import InputError
from slmops.core.files import atomic_dir, read_jsonl


def test_atomic_dir_publishes_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
        assert not target.exists()
    assert (target / "weights").read_text() == "new"


def test_atomic_dir_keeps_the_old_output_when_the_block_fails(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_read_jsonl_names_the_malformed_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"message": "a"}\n\n{"message": "b"\n')
    with pytest.raises(InputError, match=r"prompts.jsonl:3: not valid JSON"):
        read_jsonl(path)


def test_read_jsonl_names_a_missing_key_and_a_non_object(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"message": "a"}\n{"text": "b"}\n')
    with pytest.raises(InputError, match=r"prompts.jsonl:2: missing key\(s\) message"):
        read_jsonl(path, required=("message",))
    path.write_text('["a"]\n')
    with pytest.raises(InputError, match=r"prompts.jsonl:1: expected a JSON object, got list"):
        read_jsonl(path)


def test_read_jsonl_missing_or_empty_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match="no records"):
        read_jsonl(tmp_path / "empty.jsonl")


def test_atomic_dir_clears_what_a_killed_run_left(tmp_path):
    stale = tmp_path / ".out.tmp-12345"
    stale.mkdir()
    (stale / "half").write_text("x")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "done").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_jsonl_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"message": "ok"}\n{"message": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"prompts.jsonl:2: not UTF-8 text"):
        read_jsonl(path)


def test_a_line_separator_inside_a_string_is_not_a_new_record(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"message": "a\u2028b"}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"message": "a\u2028b"}]


def test_atomic_dir_keeps_the_temporary_folder_of_a_process_still_writing(tmp_path):
    """Several processes (ranks, or two runs) writing beside each other: only temporaries of dead processes go."""
    import subprocess
    import sys

    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = tmp_path / f".out.tmp-{writer.pid}-abc"
        alive.mkdir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        stale = tmp_path / f".out.tmp-{dead.stdout.strip()}-def"
        stale.mkdir()
        with atomic_dir(tmp_path / "out") as tmp:
            assert tmp.name.startswith(f".out.tmp-{os.getpid()}-")
            (tmp / "done").write_text("y")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", alive.name])
    finally:
        writer.kill()
        writer.wait()
