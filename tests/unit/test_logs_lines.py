"""The pure parts of logs and exec: frames, whole lines from chunks, prefixes and colour, --since."""

from __future__ import annotations

import io
import json
import threading
from datetime import datetime, timezone

import click
import pytest

from deployer.cli.service import COLOURS, LinePrinter, Since, colour_wanted
from deployer.engine.containers import STDERR, STDOUT, LineSplitter, read_frames


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def reader(data: bytes, step: int):
    """A read(n) over ``data`` that hands out at most ``step`` bytes at a time (as a socket may)."""
    buf = io.BytesIO(data)
    return lambda n: buf.read(min(n, step))


@pytest.mark.parametrize("step", [1, 3, 8, 1000])
def test_frames_are_read_whatever_the_reads_return(step):
    body = frame(1, b"out 1\n") + frame(2, b"err 1\n") + frame(1, b"out 2\nout 3\n")
    assert list(read_frames(reader(body, step))) == [(STDOUT, b"out 1\n"), (STDERR, b"err 1\n"),
                                                     (STDOUT, b"out 2\nout 3\n")]


def test_a_cut_off_frame_ends_the_stream_with_what_came():
    body = frame(1, b"whole\n") + frame(2, b"half of it\n")[:-4]
    assert list(read_frames(reader(body, 5))) == [(STDOUT, b"whole\n"), (STDERR, b"half of")]
    assert list(read_frames(reader(frame(1, b"x")[:5], 5))) == []


def test_lines_split_across_chunks_come_out_whole():
    s = LineSplitter()
    assert s.feed(b"hel") == []
    assert s.feed(b"lo\nwor") == [b"hello\n"]
    assert s.feed(b"ld\n\nthree\nfo") == [b"world\n", b"\n", b"three\n"]
    assert s.flush() == [b"fo\n"]  # the last line without its newline gets one
    assert s.flush() == []


def test_interleaved_chunks_of_two_streams_stay_apart():
    """stdout and stderr chunks alternate mid-line: each stream's lines are whole and its own."""
    chunks = [(STDOUT, b"out a"), (STDERR, b"err "), (STDOUT, b"-1\nout b"), (STDERR, b"a-1\n"), (STDOUT, b"-2\n")]
    splitters = {STDOUT: LineSplitter(), STDERR: LineSplitter()}
    lines = [(kind, line) for kind, chunk in chunks for line in splitters[kind].feed(chunk)]
    assert lines == [(STDOUT, b"out a-1\n"), (STDERR, b"err a-1\n"), (STDOUT, b"out b-2\n")]


def test_lines_are_prefixed_and_go_to_their_stream():
    out, err = io.BytesIO(), io.BytesIO()
    p = LinePrinter(out, err, colour=False)
    p.line("dc/n1/web", STDOUT, b"GET /\n")
    p.line("dc/n2/web", STDERR, b"oops\n")
    p.notice("dc/n2/web", "log ended: connection reset\x1b[2J")
    assert out.getvalue() == b"dc/n1/web GET /\n"
    assert err.getvalue() == b"dc/n2/web oops\ndc/n2/web: log ended: connection reset\\x1b[2J\n"


def test_colour_is_per_source_and_stable():
    out = io.BytesIO()
    p = LinePrinter(out, io.BytesIO(), colour=True)
    for source in ("a/x/s", "a/y/s", "a/x/s"):
        p.line(source, STDOUT, b"l\n")
    first, second = f"\x1b[{COLOURS[0]}m", f"\x1b[{COLOURS[1]}m"
    assert out.getvalue().decode() == (f"{first}a/x/s\x1b[0m l\n{second}a/y/s\x1b[0m l\n{first}a/x/s\x1b[0m l\n")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color():
    assert colour_wanted(Tty(), {}) is True
    assert colour_wanted(Tty(), {"NO_COLOR": "1"}) is False
    assert colour_wanted(Tty(), {"NO_COLOR": ""}) is True  # no-color.org: present and not empty
    assert colour_wanted(io.StringIO(), {}) is False


def test_lines_from_many_threads_are_never_interleaved():
    class Slow(io.BytesIO):
        def write(self, data: bytes) -> int:  # one write per line; a torn line would show in the result
            n = 0
            for i in range(len(data)):
                n += super().write(data[i:i + 1])
            return n

    out = Slow()
    p = LinePrinter(out, io.BytesIO(), colour=False)

    def talk(name: str) -> None:
        for i in range(200):
            p.line(name, STDOUT, f"line {i} of {name}\n".encode())

    threads = [threading.Thread(target=talk, args=(f"dc/n{i}/s",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().decode().splitlines()
    assert len(lines) == 800
    for line in lines:
        source, rest = line.split(" ", 1)
        assert rest.endswith(f" of {source}") and rest.startswith("line "), line


def test_since_takes_a_duration_or_a_timestamp():
    since = Since()
    now = datetime.now(timezone.utc).timestamp()
    assert abs(since.convert("10m", None, None) - (now - 600)) < 5
    assert abs(since.convert("90", None, None) - (now - 90)) < 5
    assert since.convert("2026-12-01T10:00:00Z", None, None) == datetime(2026, 12, 1, 10, tzinfo=timezone.utc).timestamp()
    assert since.convert("2026-12-01 10:00", None, None) == datetime(2026, 12, 1, 10, tzinfo=timezone.utc).timestamp()
    assert since.convert("2026-12-01T11:00:00+01:00", None, None) == \
        datetime(2026, 12, 1, 10, tzinfo=timezone.utc).timestamp()
    with pytest.raises(click.BadParameter, match="neither a duration"):
        since.convert("yesterday", None, None)


def test_json_lines_keep_the_stream_and_quiet_drops_our_notices():
    out, err = io.BytesIO(), io.BytesIO()
    p = LinePrinter(out, err, colour=True, as_json=True, quiet=True)
    p.line("dc/n1/web", STDOUT, b"GET /\n")
    p.line("dc/n1/web", STDERR, b"oops \xff\n")
    p.notice("dc/n1/web", "log ended")
    assert [json.loads(x) for x in out.getvalue().splitlines()] == [
        {"source": "dc/n1/web", "stream": "stdout", "line": "GET /"},
        {"source": "dc/n1/web", "stream": "stderr", "line": "oops \ufffd"}]
    assert err.getvalue() == b""
