"""The secret-file policy (config/secret_files.py, docs/compose.md "Secrets"), through the compose check and the spec.

No Docker: temporary git repositories. Every refusal is asserted twice, from
the compose check and from the spec builder called directly on the same
compose file, and the two messages must be the same line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import textwrap
from pathlib import Path

import pytest

from deployer.config import loader
from deployer.config.compose_check import validate_compose
from deployer.config.compose_spec import container_spec
from deployer.config.secret_files import (
    MAX_SECRET_BYTES, open_secret_file, printable, read_secret_file, resolve_secret_file,
)  # fmt: skip
from deployer.errors import ConfigError, ValidationFailed
from deployer.spec import SecretFile
from tests.support.compose import COMPOSE, NODE_DIR, git, load, make_node, node_repo
from tests.support.repos import run

OUTSIDE_HINT = "a secret file is an untracked file of the repository or lies under a secrets_dir"
FIELD = f"{COMPOSE}:7: secrets.s.file"  # the line `file:` is written on in compose_with()


def compose_with(file: str) -> str:
    # JSON's double-quoted string is a YAML double-quoted scalar: any character can be written
    return f"services:\n  web:\n    image: nginx\n    secrets: [s]\nsecrets:\n  s:\n    file: {json.dumps(file)}\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = node_repo(tmp_path / "repo")
    (root / "README").write_text("tracked\n")
    git(root, "add", "README")
    git(root, "commit", "-q", "-m", "init")
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside.txt"
    path.write_text("not yours\n")
    return path


def write(repo: Path, rel: str, content: str | bytes = "s3cret\n") -> Path:
    path = repo / NODE_DIR / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def link(repo: Path, rel: str, to: str | Path) -> Path:
    path = repo / NODE_DIR / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(to, path)
    return path


def spec_secrets(repo: Path, text: str, secrets_dirs=()) -> list[SecretFile]:
    node = dataclasses.replace(make_node(text), secrets_dirs=tuple(str(d) for d in secrets_dirs))
    return container_spec(node, node.services["web"], repo).secrets


def refusal(repo: Path, file: str, secrets_dirs=()) -> str:
    """The one message the compose check gives for ``file``, after asserting the spec builder gives the same."""
    text = compose_with(file)
    (repo / COMPOSE).write_text(text)  # on disk, so the spec builder can say the line too
    found = validate_compose(load(text), COMPOSE, repo, secrets_dirs=[str(d) for d in secrets_dirs])
    assert len(found) == 1, [e.render() for e in found]
    with pytest.raises(ConfigError) as info:
        spec_secrets(repo, text, secrets_dirs)
    assert info.value.render() == found[0].render()
    message = found[0].render()
    message.encode("utf-8")  # printable: never a UnicodeEncodeError
    assert message.isprintable(), message
    return message


def accepted(repo: Path, file: str, secrets_dirs=()) -> SecretFile:
    text = compose_with(file)
    assert validate_compose(load(text), COMPOSE, repo, secrets_dirs=[str(d) for d in secrets_dirs]) == []
    (secret,) = spec_secrets(repo, text, secrets_dirs)
    return secret


# --------------------------------------------------------------------------
# The examples of issue 9, each refused with its line


def test_a_relative_path_climbing_out_of_the_repository(repo):
    file = "../../../../../../../tmp/x"
    lexical = os.path.normpath(repo / NODE_DIR / file)
    assert refusal(repo, file) == (
        f"{FIELD}: secret file {file} climbs out of the repository (to {lexical}); a relative path must stay "
        "inside it: name a file elsewhere by its absolute path under the datacenter's secrets_dir"
    )


def test_a_relative_path_to_an_existing_file_outside(repo, outside):
    file = os.path.relpath(outside, repo / NODE_DIR)
    assert file.startswith("../")
    assert refusal(repo, file).startswith(f"{FIELD}: secret file {file} climbs out of the repository (to {outside});")


def test_a_system_file_by_absolute_path(repo):
    assert Path("/etc/hostname").is_file()
    assert refusal(repo, "/etc/hostname") == (
        f"{FIELD}: secret file /etc/hostname is outside the repository and the datacenter's secrets_dir "
        f"(none set in datacenter.yml); {OUTSIDE_HINT}"
    )


def test_an_untracked_symlink_pointing_outside(repo, outside):
    link(repo, "secrets/link", outside)
    assert refusal(repo, "secrets/link") == (
        f"{FIELD}: secret file {NODE_DIR}/secrets/link (resolves to {outside}) is outside the repository and the "
        f"datacenter's secrets_dir (none set in datacenter.yml); {OUTSIDE_HINT}"
    )


@pytest.mark.parametrize("file, under", [
    ("/proc/self/environ", "/proc"), ("/proc/1/../self/environ", "/proc"), ("/sys/kernel/notes", "/sys"),
    ("/dev/null", "/dev"), ("/dev/stdin", "/dev"),
])  # fmt: skip
def test_proc_sys_and_dev_are_never_secrets(repo, file, under):
    shown = os.path.normpath(file)
    assert refusal(repo, file) == f"{FIELD}: secret file {shown} is under {under}: system files are never secrets"


def test_a_symlink_into_proc_is_refused_after_resolving(repo):
    link(repo, "secrets/env", "/proc/self/environ")
    message = refusal(repo, "secrets/env")
    assert re.fullmatch(
        rf"{FIELD}: secret file {NODE_DIR}/secrets/env \(resolves to /proc/\d+/environ\) is under /proc: "
        "system files are never secrets", message), message


def test_an_untracked_symlink_to_a_tracked_file(repo):
    write(repo, "tracked.txt")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "a tracked file")
    link(repo, "secrets/link", "../tracked.txt")
    assert refusal(repo, "secrets/link") == (
        f"{FIELD}: secret file {NODE_DIR}/secrets/link (resolves to {NODE_DIR}/tracked.txt), which is tracked by git; "
        "secrets must stay out of the repository"
    )
    assert refusal(repo, "../../../README") == (
        f"{FIELD}: secret file README is tracked by git; secrets must stay out of the repository"
    )


def test_a_tracked_path_with_pathspec_characters_is_asked_literally(repo):
    write(repo, "a*.txt")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "star")
    write(repo, "ab.txt")  # untracked, and matched by the pathspec a*.txt if it were not taken literally
    assert "is tracked by git" in refusal(repo, "a*.txt")
    assert accepted(repo, "ab.txt").content == b"s3cret\n"


def test_a_relative_path_that_leaves_the_repository_and_comes_back_through_a_symlink(repo):
    deep = repo / "deep" / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (repo / "deep" / "secret.txt").write_text("s\n")
    link(repo, "lnk", deep)
    file = "lnk/../../../../../secret.txt"  # really deep/secret.txt, inside; lexically outside
    assert os.path.realpath(repo / NODE_DIR / file) == str(repo / "deep" / "secret.txt")
    assert refusal(repo, file).startswith(f"{FIELD}: secret file {file} climbs out of the repository")


def test_not_a_regular_file(repo):
    os.mkfifo(repo / NODE_DIR / "fifo")
    assert refusal(repo, "fifo") == f"{FIELD}: secret file {NODE_DIR}/fifo is not a regular file"
    link(repo, "to-fifo", "fifo")
    assert refusal(repo, "to-fifo") == (
        f"{FIELD}: secret file {NODE_DIR}/to-fifo (resolves to {NODE_DIR}/fifo) is not a regular file"
    )


def test_missing_dangling_and_looping(repo):
    assert refusal(repo, "nope") == f"{FIELD}: secret file {NODE_DIR}/nope does not exist"
    link(repo, "dangling", "nowhere")
    assert refusal(repo, "dangling") == f"{FIELD}: secret file {NODE_DIR}/dangling does not exist"
    link(repo, "loop-a", "loop-b")
    link(repo, "loop-b", "loop-a")
    assert refusal(repo, "loop-a") == (
        f"{FIELD}: secret file {NODE_DIR}/loop-a cannot be resolved: Too many levels of symbolic links"
    )


def test_the_repositorys_git_directory(repo):
    assert refusal(repo, "../../../.git/config") == (
        f"{FIELD}: secret file .git/config is inside the repository's .git directory"
    )


def test_size_limit(repo):
    write(repo, "big", b"x" * (MAX_SECRET_BYTES + 1))
    assert refusal(repo, "big") == (
        f"{FIELD}: secret file {NODE_DIR}/big holds 1048577 bytes; a secret file may hold at most 1048576 bytes (1 MiB)"
    )
    write(repo, "limit", b"x" * MAX_SECRET_BYTES)
    assert len(accepted(repo, "limit").content) == MAX_SECRET_BYTES


# --------------------------------------------------------------------------
# Paths that cannot be printed as they are


def test_a_lone_surrogate_prints_escaped(repo):
    assert refusal(repo, "\ud800") == (
        f"{FIELD}: secret file \\ud800 is not a valid file name (it cannot be encoded)"
    )


def test_control_characters_and_nul_print_escaped(repo):
    assert refusal(repo, "a\x1b[31mb\nc\\d") == (
        f"{FIELD}: secret file {NODE_DIR}/a\\x1b[31mb\\nc\\\\d does not exist"
    )
    assert refusal(repo, "a\0b") == f"{FIELD}: secret file a\\x00b contains a NUL byte"


def test_a_resolved_path_that_is_not_utf8_prints_escaped(repo, tmp_path):
    strange = tmp_path / os.fsdecode(b"caf\xff\x07")  # the kernel's bytes, not UTF-8
    strange.write_text("x\n")
    link(repo, "secrets/strange", strange)
    assert refusal(repo, "secrets/strange") == (
        f"{FIELD}: secret file {NODE_DIR}/secrets/strange (resolves to {tmp_path}/caf\\udcff\\x07) is outside the "
        f"repository and the datacenter's secrets_dir (none set in datacenter.yml); {OUTSIDE_HINT}"
    )


def test_printable():
    assert printable("plain/ü/日本") == "plain/ü/日本"
    assert printable("\ud800\udcff\t\x7f\u202e\\") == "\\ud800\\udcff\\t\\x7f\\u202e\\\\"


# --------------------------------------------------------------------------
# What is accepted


def test_an_untracked_file_of_the_repository(repo):
    path = write(repo, "secrets/db_password.txt")
    secret = accepted(repo, "secrets/db_password.txt")
    assert (secret.source, secret.content, secret.target) == (str(path), b"s3cret\n", "/run/secrets/s")
    (repo / ".gitignore").write_text("secrets/\n")  # ignored is untracked too
    assert accepted(repo, "secrets/db_password.txt").content == b"s3cret\n"
    assert accepted(repo, str(path)).source == str(path)  # by absolute path


def test_an_untracked_symlink_to_an_untracked_file_is_read_through(repo):
    target = write(repo, "real.txt")
    link(repo, "secrets/link", "../real.txt")
    secret = accepted(repo, "secrets/link")
    assert (secret.source, secret.content) == (str(target), b"s3cret\n")


def test_a_file_under_the_datacenters_secrets_dir(repo, tmp_path):
    secrets_dir = tmp_path / "etc" / "deployer" / "secrets" / "dev"
    secrets_dir.mkdir(parents=True)
    (secrets_dir / "db").write_text("from the secrets_dir\n")
    secret = accepted(repo, str(secrets_dir / "db"), [secrets_dir])
    assert (secret.source, secret.content) == (str(secrets_dir / "db"), b"from the secrets_dir\n")
    link(repo, "secrets/db", secrets_dir / "db")  # a symlink in the repository into it
    assert accepted(repo, "secrets/db", [secrets_dir]).content == b"from the secrets_dir\n"
    # the same files without the secrets_dir: refused
    assert "is outside the repository and the datacenter's secrets_dir (none set" in refusal(repo, "secrets/db")
    other = tmp_path / "other"
    other.mkdir()
    assert refusal(repo, str(secrets_dir / "db"), [other]) == (
        f"{FIELD}: secret file {secrets_dir}/db is outside the repository and the datacenter's secrets_dir "
        f"({other}); {OUTSIDE_HINT}"
    )
    # a secrets_dir that is itself a symlink is resolved too
    os.symlink(secrets_dir, tmp_path / "dir-link")
    assert accepted(repo, str(secrets_dir / "db"), [tmp_path / "dir-link"]).content == b"from the secrets_dir\n"
    # a sibling folder whose name starts the same is not under it
    (tmp_path / "etc/deployer/secrets/dev2").mkdir()
    (tmp_path / "etc/deployer/secrets/dev2/db").write_text("x\n")
    assert "is outside the repository" in refusal(repo, str(tmp_path / "etc/deployer/secrets/dev2/db"), [secrets_dir])


def test_each_secret_file_is_read_once_per_spec(repo):
    write(repo, "s.txt")
    text = compose_with("s.txt").replace("secrets: [s]", "secrets: [s, {source: s, target: again}]")
    a, b = spec_secrets(repo, text)
    assert a.content is b.content and a.sha256 == b.sha256


# --------------------------------------------------------------------------
# Between the check and the read


def resolved(repo: Path, rel: str):
    return resolve_secret_file(rel, name="s", compose_path=COMPOSE, repo_root=repo)


def test_a_symlink_swapped_in_after_the_check_is_refused(repo, outside):
    path = write(repo, "s.txt")
    source = resolved(repo, "s.txt")
    path.unlink()
    os.symlink(outside, path)
    with pytest.raises(ConfigError) as info:
        open_secret_file(source, name="s", compose_path=COMPOSE)
    assert info.value.render() == (
        f"{COMPOSE}: secrets.s.file: secret file {NODE_DIR}/s.txt was replaced by a symlink after it was checked"
    )


def test_another_file_swapped_in_after_the_check_is_refused(repo, outside):
    path = write(repo, "s.txt")
    source = resolved(repo, "s.txt")
    os.replace(write(repo, "other.txt"), path)
    with pytest.raises(ConfigError, match="was replaced by another file after it was checked"):
        open_secret_file(source, name="s", compose_path=COMPOSE)
    # a folder on the way swapped for a symlink: the final component is no symlink, the file is another one
    source = resolved(repo, "s.txt")
    (repo / NODE_DIR).rename(repo / "moved")
    fake = repo / "elsewhere"
    fake.mkdir()
    (fake / "s.txt").write_text("other\n")
    os.symlink(fake, repo / NODE_DIR)
    with pytest.raises(ConfigError, match="was replaced by another file after it was checked"):
        open_secret_file(source, name="s", compose_path=COMPOSE)


def test_a_file_grown_past_the_limit_after_the_check_is_refused(repo):
    path = write(repo, "s.txt")
    source = resolved(repo, "s.txt")
    path.write_bytes(b"x" * (MAX_SECRET_BYTES + 10))
    with pytest.raises(ConfigError, match="holds 1048586 bytes; a secret file may hold at most"):
        open_secret_file(source, name="s", compose_path=COMPOSE)


def test_read_secret_file_returns_the_checked_bytes(repo):
    path = write(repo, "s.txt", b"\x00binary\xff")
    source, data = read_secret_file("s.txt", name="s", compose_path=COMPOSE, repo_root=repo)
    assert (source.path, source.size, data) == (str(path), 8, b"\x00binary\xff")


# --------------------------------------------------------------------------
# datacenter.yml secrets_dir, through the loader


def infra(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "infra"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    git(root, "init", "-q")
    return root


def test_secrets_dir_in_datacenter_yml(tmp_path):
    secrets_dir = tmp_path / "secrets" / "dev"
    secrets_dir.mkdir(parents=True)
    (secrets_dir / "db").write_text("pw\n")
    compose = compose_with(str(secrets_dir / "db"))
    root = infra(tmp_path, {
        "datacenters/dev/datacenter.yml": f"secrets_dir: {secrets_dir}\n",
        "datacenters/dev/n1/node.yml": "docker: unix:///x.sock\n",
        "datacenters/dev/n1/docker-compose.yml": compose,
        "datacenters/prod/datacenter.yml": f"secrets_dir: [{tmp_path}/secrets/dev/../dev/]\n",
        "datacenters/prod/n1/node.yml": "docker: unix:///x.sock\n",
        "datacenters/prod/n1/docker-compose.yml": compose,
        "datacenters/test/n1/node.yml": "docker: unix:///x.sock\n",
        "datacenters/test/n1/docker-compose.yml": compose,
    })  # fmt: skip
    infrastructure, problems = loader.check(root)
    assert [p.render() for p in problems] == [
        f"datacenters/test/n1/docker-compose.yml:7: secrets.s.file: secret file {secrets_dir}/db is outside the "
        f"repository and the datacenter's secrets_dir (none set in datacenter.yml); {OUTSIDE_HINT}"
    ]
    dev, prod = infrastructure.datacenters["dev"], infrastructure.datacenters["prod"]
    assert dev.secrets_dirs == prod.secrets_dirs == (str(secrets_dir),)
    node = dev.nodes["n1"]
    assert node.secrets_dirs == dev.secrets_dirs
    (secret,) = container_spec(node, node.services["web"], root).secrets
    assert secret.content == b"pw\n"
    # one node alone (node add) and an edited compose file (deploy) keep the datacenter's secrets_dir
    alone = loader.load_node(root, "dev", "n1")
    assert alone.secrets_dirs == dev.secrets_dirs and alone.services["web"].image == "nginx"
    edited = loader.with_compose_text(root, node, compose.replace("image: nginx", "image: nginx:2"))
    assert container_spec(edited, edited.services["web"], root).secrets[0].content == b"pw\n"
    with pytest.raises(ValidationFailed, match="outside the repository"):
        loader.load_node(root, "test", "n1")


def test_secrets_dir_must_be_existing_absolute_folders(tmp_path):
    (tmp_path / "a-file").write_text("")
    root = infra(tmp_path, {
        "datacenters/a/datacenter.yml": "secrets_dir: relative/dir\n",
        "datacenters/b/datacenter.yml": f"secrets_dir:\n  - {tmp_path}\n  - {tmp_path}/missing\n  - {tmp_path}/a-file\n"
                                        "  - 5\n  - /\n",
        "datacenters/c/datacenter.yml": "secrets_dir: {a: b}\n",
        "datacenters/d/datacenter.yml": "secrets_dir: ''\n",
    })  # fmt: skip
    _, problems = loader.check(root)
    assert [p.render() for p in problems] == [
        "datacenters/a/datacenter.yml:1: secrets_dir: 'relative/dir' is not an absolute path",
        f"datacenters/b/datacenter.yml:3: secrets_dir[1]: '{tmp_path}/missing' does not exist or is not a directory",
        f"datacenters/b/datacenter.yml:4: secrets_dir[2]: '{tmp_path}/a-file' does not exist or is not a directory",
        "datacenters/b/datacenter.yml:5: secrets_dir[3]: must be a non-empty string",
        "datacenters/b/datacenter.yml:6: secrets_dir[4]: '/' is the root folder: every file of the machine would be "
        "a possible secret",
        "datacenters/c/datacenter.yml:1: secrets_dir: must be an absolute path or a list of them",
        "datacenters/d/datacenter.yml:1: secrets_dir: must be a non-empty string",
    ]


# --------------------------------------------------------------------------
# The command line: exit 3, one line, whatever the path holds


def test_validate_refuses_with_exit_3_and_one_printable_line(tmp_path):
    root = infra(tmp_path, {
        "datacenters/dev/n1/node.yml": "docker: unix:///x.sock\n",
        "datacenters/dev/n1/docker-compose.yml": compose_with("\ud800"),
        "datacenters/dev/n2/node.yml": "docker: unix:///x.sock\n",
        "datacenters/dev/n2/docker-compose.yml": compose_with("/proc/self/environ"),
    })  # fmt: skip
    done = run(root, "validate", timeout=60)
    assert (done.returncode, done.stderr) == (3, "")
    assert done.stdout.splitlines() == [
        "datacenters/dev/n1/docker-compose.yml:7: secrets.s.file: secret file \\ud800 is not a valid file name "
        "(it cannot be encoded)",
        "datacenters/dev/n2/docker-compose.yml:7: secrets.s.file: secret file /proc/self/environ is under /proc: "
        "system files are never secrets",
    ]


def test_the_spec_builder_called_on_unchecked_data_refuses_a_missing_or_wrong_file_value(repo):
    for secrets in ({"s": {"environment": "X"}}, {"s": {"file": 5}}, {}):
        node = make_node(compose_with("x"))
        node.secrets = secrets
        with pytest.raises(ConfigError) as info:
            container_spec(node, node.services["web"], repo)
        assert info.value.render() == (
            f"{COMPOSE}: secrets.s.file: must be a non-empty string: the path of the secret file"
        )
