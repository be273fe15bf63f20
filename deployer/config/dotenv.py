"""The dotenv format, as Compose reads an ``env_file``.

``parse_dotenv(text, path)`` -> [(name, value)] in file order, or a
ConfigError ``<env file>:<line>: env_file: <why>``. The grammar (Compose's,
docs.docker.com "Set environment variables" / compose-go's dotenv reader):

* blank lines and lines whose first non-blank character is ``#`` are skipped;
* ``NAME=value``, optionally preceded by ``export``; spaces around the name and
  before the value are ignored;
* an unquoted value runs to the end of the line, loses trailing blanks, and a
  `` #`` (blank then ``#``) starts a comment;
* ``'single quoted'`` is taken literally and may span lines;
* ``"double quoted"`` may span lines and reads the escapes ``\\n \\r \\t \\\\ \\" \\$``;
* anything after a closing quote other than blanks and a comment is an error.

Refused, with the reason: a ``NAME`` without ``=`` (Compose fills it from the
operator's shell, which the deployer never reads), and a ``$`` outside single
quotes (Compose would interpolate it; write it in single quotes, or ``\\$`` in
double quotes, for a literal dollar).
"""

from __future__ import annotations

import re

from deployer.errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "$": "$"}
_DOLLAR = ("Compose would interpolate '$' here, which the deployer does not do in an env_file: "
           "write the value in single quotes, or '\\$' in double quotes, for a literal '$'")


def parse_dotenv(text: str, path: str) -> list[tuple[str, str]]:
    """Every assignment of a dotenv file, in order (a later one of the same name wins when made a mapping)."""
    out: list[tuple[str, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        lineno = i + 1
        line = lines[i].rstrip("\r")
        i += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue

        def refuse(message: str, at: int = lineno) -> ConfigError:
            return ConfigError(path, message, line=at, field="env_file")

        body = stripped
        if body.startswith("export ") or body.startswith("export\t"):
            body = body[len("export"):].lstrip()
        name, eq, rest = body.partition("=")
        name = name.strip()
        if not eq:
            raise refuse(f"{name!r} has no value: Compose would take it from the operator's shell, which the "
                         "deployer never reads; write NAME=value")
        if not _NAME.fullmatch(name):
            raise refuse(f"invalid variable name {name!r}")
        rest = rest.lstrip(" \t")
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            value_chars: list[str] = []
            buf = rest[1:]
            start = lineno
            while True:
                j = 0
                closed = False
                while j < len(buf):
                    ch = buf[j]
                    if quote == '"' and ch == "\\" and j + 1 < len(buf):
                        nxt = buf[j + 1]
                        value_chars.append(_ESCAPES.get(nxt, "\\" + nxt))
                        j += 2
                        continue
                    if ch == quote:
                        closed = True
                        break
                    if quote == '"' and ch == "$":
                        raise refuse(_DOLLAR, lineno)
                    value_chars.append(ch)
                    j += 1
                if closed:
                    tail = buf[j + 1:].strip()
                    if tail and not tail.startswith("#"):
                        raise refuse(f"unexpected {tail!r} after the closing quote of {name}", lineno)
                    break
                if i >= len(lines):
                    raise refuse(f"the value of {name} opens a {quote} quote that is never closed", start)
                value_chars.append("\n")
                buf = lines[i].rstrip("\r")
                i += 1
                lineno = i
            out.append((name, "".join(value_chars)))
            continue
        value = re.split(r"[ \t]#", rest, maxsplit=1)[0].rstrip(" \t")
        if "$" in value:
            raise refuse(_DOLLAR)
        out.append((name, value))
    return out
