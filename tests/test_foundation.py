"""The shared foundation: user errors become one line and exit 2; writes are atomic."""

from __future__ import annotations

import errno
import json
import os

import pytest

from harness import atomic
from harness.cli import main
from harness.errors import UserError, closest, unknown_name_error


def test_user_error_is_one_line():
    error = UserError("bad value\n  in file x.yaml\n")
    assert str(error) == "bad value in file x.yaml"


def test_unknown_name_error_suggests_closest():
    error = unknown_name_error("dataset", "fashon_mnist", ["mnist", "fashion_mnist", "cifar10"])
    assert str(error) == ("unknown dataset 'fashon_mnist'. Did you mean 'fashion_mnist'? "
                          "Valid: cifar10, fashion_mnist, mnist")
    assert closest("zzzz", ["mnist"]) is None


def test_cli_turns_user_error_into_exit_2_without_traceback(monkeypatch, capsys):
    import harness.cli as cli

    def failing(_args):
        raise UserError("unknown dataset 'x'. Valid: mnist")

    parser = cli.build_parser()
    args = parser.parse_args(["datasets"])
    monkeypatch.setattr(cli, "build_parser", lambda: _FixedParser(args, failing))
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == "harness: error: unknown dataset 'x'. Valid: mnist\n"


class _FixedParser:
    def __init__(self, args, func):
        self.args = args
        self.args.func = func

    def parse_args(self, _argv):
        return self.args


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic.write_json(target, {"x": 1})
    atomic.write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert os.listdir(target.parent) == ["a.json"]  # no temporary files left
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_open(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_read_jsonl_skips_torn_last_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    atomic.append_jsonl(path, {"step": 1})
    atomic.append_jsonl(path, {"step": 2})
    with open(path, "a") as handle:
        handle.write('{"step": 3')  # a crash mid-append
    assert atomic.read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_append_after_a_torn_line_keeps_both_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    atomic.append_jsonl(path, {"step": 1})
    with open(path, "a") as handle:
        handle.write('{"step": 2, "lo')  # a crash mid-append
    atomic.append_jsonl(path, {"step": 3})  # the resumed run
    assert atomic.read_jsonl(path) == [{"step": 1}, {"step": 3}]
    assert path.read_text().splitlines()[1] == '{"step": 2, "lo'


def test_every_cut_of_a_row_is_skipped_and_other_bad_lines_raise(tmp_path):
    """A crash can cut a row after any character: each such cut is skipped wherever it sits;
    a line that is not a cut row (a bad edit) is an error naming the file and line."""
    path = tmp_path / "rows.jsonl"
    row = {"metric": 'a "quoted" {brace} [x]\\', "value": [1.5, {"n": -2e-3}], "ok": True}
    text = json.dumps(row, sort_keys=True)
    for cut in range(1, len(text)):
        path.write_text('{"step": 1}\n' + text[:cut] + '\n{"step": 2}\n')
        assert atomic.read_jsonl(path) == [{"step": 1}, {"step": 2}], text[:cut]
    for bad in ("{not json}", '{"a": 1}}', "garbage", '{"a": 1} {"b"'):
        path.write_text('{"step": 1}\n' + bad + "\n")
        with pytest.raises(ValueError, match=f"{path} has a corrupt row at line 2 "):
            atomic.read_jsonl(path)


def _short_writes(monkeypatch, counts):
    """os.write that writes only the next of `counts` bytes per call; an exception in `counts`
    is raised instead (a disk that fills up mid-line)."""
    real_write = os.write
    counts = list(counts)

    def write(fd, data):
        step = counts.pop(0) if counts else len(data)
        if isinstance(step, BaseException):
            raise step
        return real_write(fd, data[:step])

    monkeypatch.setattr(atomic.os, "write", write)


def test_a_short_append_is_finished(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    atomic.append_jsonl(path, {"step": 1})
    _short_writes(monkeypatch, [3, 4])
    atomic.append_jsonl(path, {"step": 2, "loss": 1.5})
    assert atomic.read_jsonl(path) == [{"step": 1}, {"step": 2, "loss": 1.5}]


def test_a_disk_full_append_is_undone_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    atomic.append_jsonl(path, {"step": 1})
    before = path.read_bytes()
    _short_writes(monkeypatch, [5, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))])
    with pytest.raises(OSError) as caught:
        atomic.append_jsonl(path, {"step": 2})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert path.read_bytes() == before  # no torn half-row left in front of the next one
    monkeypatch.undo()
    atomic.append_jsonl(path, {"step": 3})
    assert atomic.read_jsonl(path) == [{"step": 1}, {"step": 3}]
