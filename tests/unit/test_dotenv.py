"""config.dotenv: the env_file format as Compose reads it; what the deployer refuses, with the line."""

from __future__ import annotations

import pytest

from deployer.config.dotenv import parse_dotenv
from deployer.errors import ConfigError


def test_the_forms_compose_reads():
    text = ("# a comment\n\n   # indented comment\nA=1\nexport B = two words # comment\nC='lit $x #no'\n"
            'D="l1\\nl2 \\$5 \\"q\\""\nE="multi\nline"\nF=\nG=a#b\nH=\'\'  # empty\r\nI=x=y\n')
    assert parse_dotenv(text, "a.env") == [
        ("A", "1"), ("B", "two words"), ("C", "lit $x #no"), ("D", 'l1\nl2 $5 "q"'), ("E", "multi\nline"),
        ("F", ""), ("G", "a#b"), ("H", ""), ("I", "x=y"),
    ]


def test_a_later_assignment_wins_as_a_mapping():
    assert dict(parse_dotenv("A=1\nA=2\n", "a.env")) == {"A": "2"}


@pytest.mark.parametrize("text, line, message", [
    ("A=1\nNAME\n", 2, "'NAME' has no value: Compose would take it from the operator's shell, which the deployer "
                       "never reads; write NAME=value"),
    ("A=${HOME}\n", 1, "Compose would interpolate '$' here"),
    ('A="$HOME"\n', 1, "Compose would interpolate '$' here"),
    ("1A=x\n", 1, "invalid variable name '1A'"),
    ("A='open\nB=2\n", 1, "the value of A opens a ' quote that is never closed"),
    ("X=1\nA='v' tail\n", 2, "unexpected 'tail' after the closing quote of A"),
])  # fmt: skip
def test_refusals_name_the_line(text, line, message):
    with pytest.raises(ConfigError) as info:
        parse_dotenv(text, "datacenters/dc1/n1/app.env")
    assert info.value.line == line
    assert info.value.render().startswith(f"datacenters/dc1/n1/app.env:{line}: env_file: {message}")
