"""The source archive sent to a build engine and the /out archive that comes back (deployer.build.transfer).

No engine: the ignore grammar (Docker's .dockerignore), which file is read, the size limit checked
before anything is packed, and what unpacking /out accepts.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from deployer.build import builders as B
from deployer.build import transfer as T
from deployer.errors import BuildFailed, ConfigError, SourceError, SourceTooLarge


def ex(path: str, *lines: str) -> bool:
    return T.excluded(path, T.parse_ignore("\n".join(lines)))


# --------------------------------------------------------------------------- the grammar


def test_star_stays_within_one_directory():
    assert ex("a.log", "*.log")
    assert not ex("logs/a.log", "*.log")  # as in Docker: patterns are anchored at the app directory
    assert ex("logs/a.log", "*/*.log")
    assert ex("logs/a.log", "logs")  # a parent directory that matches leaves everything below out


def test_double_star_any_number_of_directories():
    assert ex("a.log", "**/*.log")
    assert ex("x/y/z/a.log", "**/*.log")
    assert ex("node_modules/x/y", "**/node_modules")
    assert ex("web/node_modules", "**/node_modules")
    assert ex("build/a/b", "build/**")
    assert not ex("src/main.go", "**/*.log")


def test_question_mark_classes_and_escapes():
    assert ex("a1", "a?") and not ex("a/1", "a?x") and not ex("a12", "a?")
    assert ex("b.txt", "[a-c].txt") and not ex("d.txt", "[a-c].txt")
    assert ex("d.txt", "[^a-c].txt") and not ex("a.txt", "[^a-c].txt")
    assert ex("*star", r"\*star") and not ex("xstar", r"\*star")


def test_exceptions_last_match_wins():
    lines = ("*.md", "!README.md")
    assert ex("NOTES.md", *lines) and not ex("README.md", *lines)
    assert ex("README.md", "*.md", "!README.md", "README*")  # a later pattern takes it out again


def test_exception_inside_excluded_directory():
    patterns = T.parse_ignore("docs\n!docs/keep.txt\n")
    # the parent "docs" still matches the first pattern, the exception matches the file itself: the last decides
    assert not T.excluded("docs/keep.txt", patterns)
    assert T.excluded("docs/other.txt", patterns)


def test_comments_blanks_leading_slash_and_dot_parts():
    patterns = T.parse_ignore("# a comment\n\n   /vendor/  \n./tmp/../cache\n")
    assert [p.text for p in patterns] == ["vendor", "cache"]
    assert T.excluded("vendor/x.go", patterns) and T.excluded("cache", patterns)
    assert not T.excluded("tmp", patterns)


def test_malformed_pattern_names_file_and_line():
    with pytest.raises(SourceError, match=r"^\.dockerignore:2: pattern 'a\[b' has an unclosed \[$"):
        T.parse_ignore("ok\na[b\n")


# --------------------------------------------------------------------------- which file, what is packed


def _app(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    (app / "cmd").mkdir(parents=True)
    (app / "go.mod").write_text("module x\n")
    (app / "cmd" / "main.go").write_text("package main\n")
    (app / "big.bin").write_bytes(b"\0" * 5000)
    (app / "notes.md").write_text("notes\n")
    os.symlink("cmd/main.go", app / "link.go")
    return app


def _names(archive: T.SourceArchive) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=archive.file) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_pack_sends_everything_without_an_ignore_file(tmp_path):
    app = _app(tmp_path)
    archive = T.pack_source(app)
    names = _names(archive)
    assert set(names) == {"src", "out", "src/big.bin", "src/cmd", "src/cmd/main.go", "src/go.mod", "src/link.go",
                          "src/notes.md"}
    assert names["src/link.go"].issym() and names["src/link.go"].linkname == "cmd/main.go"
    assert names["out"].isdir() and names["src/big.bin"].size == 5000
    assert archive.files == 4 and archive.content_bytes == 5000 + len("module x\n") + len("package main\n") + 6
    assert archive.ignore_file is None


def test_deployerignore_wins_over_dockerignore(tmp_path):
    app = _app(tmp_path)
    (app / ".dockerignore").write_text("*\n!sensor\n")  # written for the image's context (the binaries)
    (app / ".deployerignore").write_text("*.bin\n*.md\n")
    archive = T.pack_source(app)
    names = _names(archive)
    assert archive.ignore_file == app / ".deployerignore"
    assert "src/big.bin" not in names and "src/notes.md" not in names
    assert "src/cmd/main.go" in names and "src/.dockerignore" in names and "src/.deployerignore" in names


def test_dockerignore_read_without_deployerignore(tmp_path):
    app = _app(tmp_path)
    (app / ".dockerignore").write_text("cmd\n")
    names = _names(T.pack_source(app))
    assert "src/cmd" not in names and "src/cmd/main.go" not in names and "src/go.mod" in names


def test_extra_files_go_in_at_their_path(tmp_path):
    names = _names(T.pack_source(_app(tmp_path), extra={"etc/ssl/ca.crt": b"PEM"}))
    assert names["etc/ssl/ca.crt"].size == 3


def test_over_the_limit_refused_before_packing(tmp_path, monkeypatch):
    app = _app(tmp_path)
    opened = []
    monkeypatch.setattr(T.tempfile, "SpooledTemporaryFile", lambda *a, **k: opened.append(1))
    with pytest.raises(SourceTooLarge) as e:
        T.pack_source(app, limit=4096, limit_from=" (deployer.yml source_limit)")
    assert opened == []
    msg = str(e.value)
    assert "the source to send is 4.9 KiB in 4 files, over the limit of 4.0 KiB (deployer.yml source_limit)" in msg
    assert "(biggest: big.bin, 4.9 KiB)" in msg and "leave files out in .deployerignore or .dockerignore" in msg
    assert e.value.exit_code == 3
    monkeypatch.undo()
    (app / ".dockerignore").write_text("big.bin\n")
    assert T.pack_source(app, limit=4096).content_bytes < 4096  # excluded files do not count


def test_source_limit_in_deployer_yml(tmp_path):
    app = _app(tmp_path)
    (app / "deployer.yml").write_text("source_limit: 2k\n")
    cfg = B.load_app_config(app)
    assert cfg.source_limit == 2048 and cfg.source_limit_set
    assert B.load_app_config(tmp_path).source_limit == T.DEFAULT_SOURCE_LIMIT
    (app / "deployer.yml").write_text("source_limit: lots\n")
    with pytest.raises(ConfigError, match="source_limit: invalid size 'lots'"):
        B.load_app_config(app)


# --------------------------------------------------------------------------- /out coming back


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return [raw[i:i + 700] for i in range(0, len(raw), 700)]  # chunks, as docker-py streams them


def _info(name: str, kind=tarfile.REGTYPE, mode=0o755, link="") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.uid = info.gid = 1234
    return info


def test_unpack_out_strips_the_top_and_keeps_exec_bits(tmp_path):
    chunks = _tar((_info("out", tarfile.DIRTYPE), None), (_info("out/sensor"), b"\x7fELF" * 500),
                  (_info("out/sub", tarfile.DIRTYPE), None), (_info("out/sub/a.txt", mode=0o644), b"a"))
    files = T.unpack_out(chunks, tmp_path / "staging")
    assert files == [tmp_path / "staging" / "sensor", tmp_path / "staging" / "sub" / "a.txt"]
    assert os.access(files[0], os.X_OK) and files[0].read_bytes() == b"\x7fELF" * 500
    assert files[0].stat().st_uid == os.getuid()


@pytest.mark.parametrize("member", [
    _info("out/../../escape"),
    _info("out/link", tarfile.SYMTYPE, link="/etc/passwd"),
    _info("elsewhere/x"),
])
def test_unpack_out_refuses_what_leaves_the_directory(tmp_path, member):
    data = None if member.issym() else b"x"
    with pytest.raises(BuildFailed, match="refused|outside out/"):
        T.unpack_out(_tar((member, data)), tmp_path / "staging")
    assert not (tmp_path / "escape").exists()


# --------------------------------------------------------------------------- the builder watched while it runs


class _FakeApi:
    def __init__(self, answers: list[bool]):
        self.answers = answers
        self.base_url = "http+docker://ssh"
        self.deployer_url = "ssh://root@10.0.0.9:2222"

    def _url(self, path):
        return path

    def _get(self, url, timeout=None):
        import requests

        assert url == "/_ping" and timeout == B.PING_TIMEOUT
        if not self.answers.pop(0):
            raise requests.exceptions.ConnectionError("no route to host")
        return type("R", (), {"status_code": 200})()


class _FakeContainer:
    def __init__(self, waits: int):
        self.waits = waits
        self.killed = False

    def wait(self, timeout):
        import requests

        assert 0 < timeout <= B.WAIT_POLL
        if self.waits:
            self.waits -= 1
            raise requests.exceptions.ReadTimeout("read timed out")
        return {"StatusCode": 0}

    def kill(self):
        self.killed = True


def test_a_running_builder_is_waited_for_while_the_engine_answers():
    client = type("C", (), {"api": _FakeApi([True, True, True])})()
    assert B._wait(client, _FakeContainer(waits=3), "go", Path("/src/app"), timeout=60) == {"StatusCode": 0}


def test_an_engine_that_stops_answering_fails_the_build_at_once():
    from deployer.errors import BuildEngineLost

    client = type("C", (), {"api": _FakeApi([True, False])})()
    container = _FakeContainer(waits=10)
    with pytest.raises(BuildEngineLost) as e:
        B._wait(client, container, "go", Path("/src/app"), timeout=60)
    assert str(e.value) == ("go build of /src/app: lost the build engine ssh://root@10.0.0.9:2222 while the builder "
                            "ran; nothing was tagged")
    assert container.waits == 8 and e.value.exit_code == 1


def test_a_transport_that_blocks_past_its_timeouts_still_fails_the_build_in_seconds(monkeypatch):
    """paramiko waits for a channel's exec reply with no timeout: the wait and the ping are bounded anyway."""
    import threading
    import time

    from deployer.errors import BuildEngineLost

    monkeypatch.setattr(B, "WAIT_POLL", 0.2)
    monkeypatch.setattr(B, "PING_TIMEOUT", 0.3)
    release = threading.Event()

    class Blocking:
        api = type("A", (), {"deployer_url": "ssh://b", "_url": lambda self, p: p,
                             "_get": lambda self, url, timeout=None: release.wait(30)})()

    class Stuck:
        def wait(self, timeout):
            release.wait(30)

    started = time.monotonic()
    try:
        with pytest.raises(BuildEngineLost, match="lost the build engine ssh://b while the builder ran"):
            B._wait(Blocking(), Stuck(), "go", Path("/src/app"), timeout=60)
        assert time.monotonic() - started < 5  # 0.2 + 0.3 (wait) + 0.3 + 1 (ping), not 30
    finally:
        release.set()
