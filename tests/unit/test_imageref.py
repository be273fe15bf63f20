"""Tests for deployer.imageref: Docker's image reference grammar."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deployer.errors import DeployerError, ImageReferenceError
from deployer.imageref import ImageRef

H64 = "0123456789abcdef" * 4
SHA = f"sha256:{H64}"

# text -> (domain, path, tag, digest)
VALID = {
    "a": (None, "a", None, None),
    "a:1": (None, "a", "1", None),
    "nginx": (None, "nginx", None, None),
    "nginx:1.25-alpine": (None, "nginx", "1.25-alpine", None),
    "worker:1.5": (None, "worker", "1.5", None),
    "team/app": (None, "team/app", None, None),
    "team/sub/app:latest": (None, "team/sub/app", "latest", None),
    "library/nginx": (None, "library/nginx", None, None),
    "localhost/a": ("localhost", "a", None, None),
    "localhost:5000/a/b:1": ("localhost:5000", "a/b", "1", None),
    "localhost:5000": (None, "localhost", "5000", None),  # as Docker: name 'localhost', tag '5000'
    f"registry.example.com:443/team/app@{SHA}": ("registry.example.com:443", "team/app", None, SHA),
    f"registry.example.com/team/app:2.0@{SHA}": ("registry.example.com", "team/app", "2.0", SHA),
    f"app@{SHA}": (None, "app", None, SHA),
    "127.0.0.1:5000/x:y": ("127.0.0.1:5000", "x", "y", None),
    "docker.io/library/nginx:1.25": ("docker.io", "library/nginx", "1.25", None),
    "ghcr.io/org/app:v1.2.3": ("ghcr.io", "org/app", "v1.2.3", None),
    "my-registry.local:5000/a.b/c_d/e__f/g-h/i---j:T_a.g-1": (
        "my-registry.local:5000",
        "a.b/c_d/e__f/g-h/i---j",
        "T_a.g-1",
        None,
    ),
    "a.b": (None, "a.b", None, None),  # no '/': never a domain
    "a.b/c": ("a.b", "c", None, None),
    "Registry/app": ("Registry", "app", None, None),  # uppercase first component is a host, like Docker
    "REGISTRY:5000/app": ("REGISTRY:5000", "app", None, None),
    "[::1]:5000/app:1": ("[::1]:5000", "app", "1", None),
    "[2001:db8::1]/team/app": ("[2001:db8::1]", "team/app", None, None),
    "a1/b2:_": (None, "a1/b2", "_", None),
    "0/1:2": (None, "0/1", "2", None),
    "app:" + "t" * 128: (None, "app", "t" * 128, None),
    "a" * 255: (None, "a" * 255, None, None),
    "host.example.com/" + "a" * (255 - len("host.example.com/")): (
        "host.example.com",
        "a" * (255 - len("host.example.com/")),
        None,
        None,
    ),
    "app@sha512:" + "ab" * 64: (None, "app", None, "sha512:" + "ab" * 64),
    "app@foo+bar.baz_x-y:" + "0" * 32: (None, "app", None, "foo+bar.baz_x-y:" + "0" * 32),
    "app@md5:" + "ABCDEF0123456789" * 2: (None, "app", None, "md5:" + "ABCDEF0123456789" * 2),
}

# text -> a fragment of the reason that must be in the message
INVALID = {
    "": "empty",
    "UPPER:1": "must be lowercase",
    "Worker:1.5": "must be lowercase",
    "team/App": "must be lowercase",
    "example.com/Team/app": "must be lowercase",
    "a::1": "invalid character ':'",
    "a:1:2": "invalid character ':'",
    "a:": "tag is empty",
    ":1": "repository name is empty",
    f"@{SHA}": "repository name is empty",
    "-a": "must start with a lowercase letter or digit",
    ".a": "must start",
    "_a": "must start",
    "a-": "must end with a lowercase letter or digit",
    "a.": "must end",
    "a..b": "invalid separator",
    "a._b": "invalid separator",
    "a___b": "invalid separator",
    "a-_b": "invalid separator",
    "a//b": "empty path component",
    "/a": "empty path component",
    "a/": "empty path component",
    "localhost/": "empty path component",
    "a b": "whitespace",
    " a": "whitespace",
    "a:1 ": "whitespace",
    "a\tb": "whitespace",
    "a\nb": "whitespace",
    "café": "character 'é'",
    "a!b": "character '!'",
    "a:" + "t" * 129: "tag is 129 characters long (at most 128)",
    "a:-1": "must start with a letter, digit or '_'",
    "a:.1": "must start with a letter, digit or '_'",
    "a:1+2": "tag '1+2' contains invalid character '+'",
    "a@": "digest is empty",
    "a@sha256": "must be algorithm:hex",
    "a@sha256:abc": "64 lowercase hex characters (got 3)",
    "a@sha256:" + H64 + "0": "64 lowercase hex characters (got 65)",
    "a@sha256:" + H64.upper(): "64 lowercase hex characters",
    "a@sha256:" + "g" * 64: "64 lowercase hex characters",
    "a@1sha:" + H64: "digest algorithm '1sha' is invalid",
    "a@sha__x:" + H64: "digest algorithm",
    "a@foo:abc": "at least 32 hex characters",
    "a@b@c": "more than one '@'",
    "a" * 256: "repository name is 256 characters long (at most 255)",
    "example.com/" + "a" * 244: "repository name is 256 characters long",
    H64: "image ID",
    "exa_mple.com/a": "registry host 'exa_mple.com' is invalid",
    "-example.com/a": "registry host",
    "example-.com/a": "registry host",
    "example..com/a": "registry host",
    ".example.com/a": "registry host",
    "example.com:/a": "registry port '' must be a number",
    "example.com:x/a": "registry port 'x' must be a number",
    ":5000/a": "empty host name",
    "[::1/a": "unterminated",
    "[zz]:5000/a": "invalid IPv6 address",
    "[::1]x/a": "text after the IPv6 address",
    "[::1]": "invalid character '['",
}


@pytest.mark.parametrize("text", sorted(VALID))
def test_valid_references(text):
    ref = ImageRef.parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == VALID[text]
    assert str(ref) == text


@pytest.mark.parametrize("text", sorted(INVALID))
def test_invalid_references(text):
    with pytest.raises(ImageReferenceError) as info:
        ImageRef.parse(text)
    message = str(info.value)
    assert message.startswith(f"invalid image reference {text!r}: ")
    assert INVALID[text] in message
    assert "\n" not in message
    assert info.value.one_line() == message


def test_exact_message_for_uppercase():
    with pytest.raises(ImageReferenceError) as info:
        ImageRef.parse("Worker:1.5")
    assert str(info.value) == "invalid image reference 'Worker:1.5': repository name must be lowercase"


def test_error_is_a_deployer_error_with_exit_code_3():
    with pytest.raises(DeployerError) as info:
        ImageRef.parse("a:")
    assert info.value.exit_code == 3


def test_not_a_string():
    with pytest.raises(ImageReferenceError, match="not a string"):
        ImageRef.parse(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, repository, name",
    [
        ("a:1", "a", "a"),
        ("team/app:1", "team/app", "app"),
        ("localhost:5000/a/b:1", "localhost:5000/a/b", "b"),
        (f"registry.example.com:443/team/app@{SHA}", "registry.example.com:443/team/app", "app"),
        ("[::1]:5000/app", "[::1]:5000/app", "app"),
    ],
)
def test_repository_and_name(text, repository, name):
    ref = ImageRef.parse(text)
    assert ref.repository == repository
    assert ref.name == name


@pytest.mark.parametrize(
    "text, familiar",
    [
        ("nginx", "nginx"),
        ("nginx:1", "nginx"),
        ("library/nginx", "nginx"),
        ("docker.io/library/nginx:1.25", "nginx"),
        ("index.docker.io/library/nginx", "nginx"),
        ("docker.io/team/app", "team/app"),
        ("docker.io/library/a/b", "library/a/b"),  # Docker only shortens library/<one component>
        ("team/app", "team/app"),
        ("ghcr.io/library/nginx", "ghcr.io/library/nginx"),
        ("localhost:5000/library/nginx", "localhost:5000/library/nginx"),
    ],
)
def test_familiar_repository(text, familiar):
    assert ImageRef.parse(text).familiar_repository == familiar


def test_same_repository_matches_docker_hub_spellings():
    assert ImageRef.parse("docker.io/library/nginx:1").same_repository("nginx:2")
    assert ImageRef.parse("nginx").same_repository(ImageRef.parse("library/nginx@" + SHA))
    assert not ImageRef.parse("ghcr.io/x/nginx").same_repository("nginx")
    assert not ImageRef.parse("team/app").same_repository("other/app")


def test_with_tag_keeps_everything_but_the_tag():
    ref = ImageRef.parse("localhost:5000/team/worker:1.4")
    new = ref.with_tag("1.5")
    assert str(new) == "localhost:5000/team/worker:1.5"
    assert (new.domain, new.path, new.tag, new.digest) == ("localhost:5000", "team/worker", "1.5", None)
    assert str(ImageRef.parse("worker").with_tag("2")) == "worker:2"
    assert ref.tag == "1.4"  # the original is unchanged


def test_with_tag_drops_the_digest():
    ref = ImageRef.parse(f"app:1@{SHA}")
    assert str(ref.with_tag("2")) == "app:2"


@pytest.mark.parametrize("tag", ["", "-x", "a b", "x" * 129, "a/b", "a@b", "a:b"])
def test_with_tag_rejects_bad_tags(tag):
    with pytest.raises(ImageReferenceError, match="invalid image reference"):
        ImageRef.parse("app:1").with_tag(tag)


def test_with_digest():
    assert str(ImageRef.parse("app:1").with_digest(SHA)) == f"app:1@{SHA}"
    with pytest.raises(ImageReferenceError, match="64 lowercase hex"):
        ImageRef.parse("app:1").with_digest("sha256:abc")


def test_frozen_hashable_and_comparable():
    ref = ImageRef.parse("a/b:1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "2"  # type: ignore[misc]
    assert ref == ImageRef.parse("a/b:1")
    assert ref != ImageRef.parse("a/b:2")
    assert len({ref, ImageRef.parse("a/b:1")}) == 1
    assert ImageRef(None, "a/b", "1", None) == ref


def test_no_normalisation():
    ref = ImageRef.parse("nginx")
    assert ref.domain is None
    assert ref.path == "nginx"
    assert str(ref) == "nginx"


# ---------------------------------------------------------------------------
# Property tests: references built from the grammar parse and round-trip.

alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
separator = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def path_components(draw):
    parts = [draw(alnum)]
    for _ in range(draw(st.integers(0, 3))):
        parts += [draw(separator), draw(alnum)]
    return "".join(parts)


label = st.from_regex(r"\A[a-zA-Z0-9]([a-zA-Z0-9-]{0,5}[a-zA-Z0-9])?\Z")


@st.composite
def domains(draw):
    kind = draw(st.sampled_from(["dotted", "localhost", "port", "ipv4", "ipv6"]))
    if kind == "dotted":
        host = ".".join(draw(st.lists(label, min_size=2, max_size=3)))
    elif kind == "localhost":
        host = "localhost"
    elif kind == "port":
        host = draw(label)
    elif kind == "ipv4":
        host = ".".join(str(draw(st.integers(0, 255))) for _ in range(4))
    else:
        host = draw(st.sampled_from(["[::1]", "[2001:db8::1]", "[fe80::1:2]"]))
    if kind == "port" or draw(st.booleans()):
        host += f":{draw(st.integers(1, 65535))}"
    return host


tags = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
digests = st.builds(lambda h: f"sha256:{h}", st.from_regex(r"\A[0-9a-f]{64}\Z"))


@st.composite
def references(draw):
    domain = draw(st.none() | domains())
    first = draw(path_components())
    if domain is None:
        # Like Docker: a first component with '.' (and a '/' after it) would be a domain.
        first = first.replace(".", "_")
    path = "/".join([first] + draw(st.lists(path_components(), max_size=3)))
    tag = draw(st.none() | tags)
    digest = draw(st.none() | digests)
    return domain, path, tag, digest


@settings(max_examples=300, deadline=None)
@given(references())
def test_grammar_references_round_trip(parts):
    domain, path, tag, digest = parts
    text = (f"{domain}/" if domain else "") + path + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = ImageRef.parse(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert str(ref) == text
    assert ImageRef.parse(str(ref)) == ref
    assert ref.name == path.rsplit("/", 1)[-1]


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="aZ09._-/:@[]+ é#", max_size=30))
def test_any_text_either_parses_and_round_trips_or_fails_cleanly(text):
    try:
        ref = ImageRef.parse(text)
    except ImageReferenceError as exc:
        message = str(exc)
        assert message.startswith(f"invalid image reference {text!r}: ")
        assert "\n" not in message
        return
    assert str(ref) == text
    assert ref.repository == text.split("@")[0][: len(ref.repository)]
    assert re.fullmatch(r"[a-z0-9._/-]+", ref.path)
