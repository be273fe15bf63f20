"""Docker image references: parse, check and take apart ``[domain/]path[:tag][@digest]``.

The grammar is the one the Docker engine and registries use::

    reference   := name [ ":" tag ] [ "@" digest ]
    name        := [ domain "/" ] path                  (at most 255 characters)
    domain      := host [ ":" port ]
    host        := domain-component ( "." domain-component )* | "[" IPv6 "]"
    domain-component := [a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]
    path        := path-component ( "/" path-component )*
    path-component := [a-z0-9]+ ( separator [a-z0-9]+ )*
    separator   := "." | "_" | "__" | "-"+
    tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest      := algorithm ":" hex
    algorithm   := [A-Za-z][A-Za-z0-9]* ( [+._-] [A-Za-z][A-Za-z0-9]* )*
    hex         := [0-9a-fA-F]{32,}                      (sha256: exactly 64, lowercase)

Whether the first ``/``-separated component is a registry domain is decided the
way Docker decides it: it is when it contains ``.`` or ``:``, is ``localhost``,
or contains an uppercase letter (a path component never can).

Nothing is normalised: ``nginx`` stays ``nginx`` and is not rewritten to
``docker.io/library/nginx``; ``str(ImageRef.parse(s)) == s`` for every valid
``s``. ``familiar_repository`` gives the short Docker Hub form so that
``docker.io/library/nginx`` and ``nginx`` can be recognised as the same thing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from deployer.errors import ImageReferenceError

NAME_TOTAL_LENGTH_MAX = 255
TAG_LENGTH_MAX = 128

DOCKER_HUB_DOMAINS = ("docker.io", "index.docker.io")
OFFICIAL_NAMESPACE = "library"

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*", re.ASCII)
_DOMAIN_COMPONENT = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?", re.ASCII)
_PORT = re.compile(r"[0-9]+", re.ASCII)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[+._-][A-Za-z][A-Za-z0-9]*)*", re.ASCII)
_HEX = re.compile(r"[0-9a-fA-F]{32,}", re.ASCII)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}", re.ASCII)  # also the form of an image ID
# Characters that may appear anywhere in a reference; anything else is reported
# by name before the finer checks run.
_ALLOWED = re.compile(r"[A-Za-z0-9._\-/:@+\[\]]*", re.ASCII)


def _fail(text: str, reason: str) -> ImageReferenceError:
    return ImageReferenceError(f"invalid image reference {text!r}: {reason}")


def _describe_char(ch: str) -> str:
    if ch.isspace():
        return "whitespace"
    if ch.isprintable():
        return f"character {ch!r}"
    return f"non-printable character {ascii(ch)}"


def _check_path_component(text: str, comp: str) -> None:
    if comp == "":
        raise _fail(text, "empty path component (a leading, trailing or doubled '/')")
    if _PATH_COMPONENT.fullmatch(comp):
        return
    if comp != comp.lower():
        raise _fail(text, "repository name must be lowercase")
    for ch in comp:
        if not (ch.isascii() and (ch.isalnum() or ch in "._-")):
            raise _fail(text, f"repository name contains invalid {_describe_char(ch)}")
    if comp[0] in "._-":
        raise _fail(text, f"path component {comp!r} must start with a lowercase letter or digit")
    if comp[-1] in "._-":
        raise _fail(text, f"path component {comp!r} must end with a lowercase letter or digit")
    raise _fail(
        text,
        f"path component {comp!r} has an invalid separator "
        "(components are joined by '.', '_', '__' or dashes)",
    )


def _check_domain(text: str, domain: str) -> None:
    if domain.startswith("["):
        end = domain.find("]")
        if end == -1:
            raise _fail(text, f"registry {domain!r} has an unterminated '[' IPv6 address")
        host, rest = domain[1:end], domain[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _fail(text, f"registry {domain!r} has an invalid IPv6 address") from None
        if "%" in host:
            raise _fail(text, f"registry {domain!r} must not have an IPv6 zone")
        if rest and not rest.startswith(":"):
            raise _fail(text, f"registry {domain!r} has text after the IPv6 address")
        port = rest[1:] if rest else None
    else:
        host, sep, port_text = domain.partition(":")
        port = port_text if sep else None
        if host == "":
            raise _fail(text, f"registry {domain!r} has an empty host name")
        for comp in host.split("."):
            if not _DOMAIN_COMPONENT.fullmatch(comp):
                raise _fail(
                    text,
                    f"registry host {host!r} is invalid (labels are letters, digits and "
                    "inner dashes, separated by single dots)",
                )
    if port is not None and not _PORT.fullmatch(port):
        raise _fail(text, f"registry port {port!r} must be a number")


def _split_domain(name: str) -> tuple[str | None, str]:
    first, slash, rest = name.partition("/")
    if not slash:
        return None, name
    if "." in first or ":" in first or first == "localhost" or first != first.lower():
        return first, rest
    return None, name


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference, kept exactly as written."""

    domain: str | None
    path: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ImageRef":
        """Parse ``text``; raise ImageReferenceError naming what is wrong."""
        if not isinstance(text, str):
            raise ImageReferenceError(f"invalid image reference {text!r}: not a string")
        if text == "":
            raise _fail(text, "reference is empty")
        if _ALLOWED.fullmatch(text) is None:
            ch = next(c for c in text if not _ALLOWED.fullmatch(c))
            raise _fail(text, f"contains {_describe_char(ch)}")

        rest, at, digest = text.partition("@")
        if at:
            _check_digest(text, digest)
        if rest == "":
            raise _fail(text, "repository name is empty")

        # The tag is after the last ':' that follows the last '/', so a
        # registry port (host:5000/app) is not mistaken for a tag.
        colon = rest.rfind(":")
        tag: str | None = None
        name = rest
        if colon > rest.rfind("/") and not rest[colon:].endswith("]"):
            name, tag = rest[:colon], rest[colon + 1 :]
            _check_tag(text, tag)
        if name == "":
            raise _fail(text, "repository name is empty")

        domain, path = _split_domain(name)
        if domain is not None:
            _check_domain(text, domain)
        for comp in path.split("/"):
            _check_path_component(text, comp)
        if len(name) > NAME_TOTAL_LENGTH_MAX:
            raise _fail(
                text, f"repository name is {len(name)} characters long (at most {NAME_TOTAL_LENGTH_MAX})"
            )
        if domain is None and _SHA256_HEX.fullmatch(path):
            raise _fail(text, "a 64-character hexadecimal string is an image ID, not a repository name")
        return cls(domain=domain, path=path, tag=tag, digest=digest if at else None)

    # -- views ---------------------------------------------------------------

    @property
    def repository(self) -> str:
        """``domain/path`` as written, without tag or digest."""
        return f"{self.domain}/{self.path}" if self.domain is not None else self.path

    @property
    def name(self) -> str:
        """The last path component: ``worker`` for ``registry:5000/team/worker:1``."""
        return self.path.rsplit("/", 1)[-1]

    @property
    def familiar_repository(self) -> str:
        """The repository in Docker's short form.

        ``docker.io/library/nginx``, ``index.docker.io/library/nginx``,
        ``library/nginx`` and ``nginx`` all give ``nginx``;
        ``docker.io/team/app`` gives ``team/app``. Other registries are kept.
        """
        if self.domain is not None and self.domain not in DOCKER_HUB_DOMAINS:
            return self.repository
        path = self.path
        prefix = OFFICIAL_NAMESPACE + "/"
        if path.startswith(prefix) and "/" not in path[len(prefix) :]:
            path = path[len(prefix) :]
        return path

    def same_repository(self, other: "ImageRef | str") -> bool:
        """True when both name the same repository (Docker Hub short forms included)."""
        if isinstance(other, str):
            other = ImageRef.parse(other)
        return self.familiar_repository == other.familiar_repository

    def __str__(self) -> str:
        out = self.repository
        if self.tag is not None:
            out += ":" + self.tag
        if self.digest is not None:
            out += "@" + self.digest
        return out

    # -- derived references --------------------------------------------------

    def with_tag(self, tag: str) -> "ImageRef":
        """The same repository with ``tag``.

        A digest is dropped: Docker resolves ``repo:tag@digest`` by the digest
        alone, so keeping it would silently ignore the new tag.
        """
        if not isinstance(tag, str):
            raise ImageReferenceError(f"invalid tag {tag!r}: not a string")
        _check_tag(f"{self.repository}:{tag}", tag)
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> "ImageRef":
        """The same repository and tag, pinned to ``digest``."""
        _check_digest(f"{self.repository}@{digest}", digest)
        return replace(self, digest=digest)


def _check_tag(text: str, tag: str) -> None:
    if tag == "":
        raise _fail(text, "tag is empty (nothing after ':')")
    if len(tag) > TAG_LENGTH_MAX:
        raise _fail(text, f"tag is {len(tag)} characters long (at most {TAG_LENGTH_MAX})")
    if not _TAG.fullmatch(tag):
        if tag[0] in ".-":
            raise _fail(text, f"tag {tag!r} must start with a letter, digit or '_'")
        ch = next(c for c in tag if not (c.isascii() and (c.isalnum() or c in "_.-")))
        raise _fail(text, f"tag {tag!r} contains invalid {_describe_char(ch)}")


def _check_digest(text: str, digest: str) -> None:
    if digest == "":
        raise _fail(text, "digest is empty (nothing after '@')")
    if "@" in digest:
        raise _fail(text, "more than one '@'")
    algorithm, colon, hexpart = digest.partition(":")
    if not colon:
        raise _fail(text, f"digest {digest!r} must be algorithm:hex (e.g. sha256:...)")
    if not _ALGORITHM.fullmatch(algorithm):
        raise _fail(text, f"digest algorithm {algorithm!r} is invalid")
    if algorithm == "sha256":
        if not _SHA256_HEX.fullmatch(hexpart):
            got = f" (got {len(hexpart)})" if len(hexpart) != 64 else ""
            raise _fail(text, f"sha256 digest must be 64 lowercase hex characters{got}")
    elif not _HEX.fullmatch(hexpart):
        raise _fail(text, f"digest {digest!r} must have at least 32 hex characters after ':'")


def parse_image(text: str) -> ImageRef:
    """Shorthand for ``ImageRef.parse``."""
    return ImageRef.parse(text)
