#!/usr/bin/env python3
"""Write docs/cli.md from the click commands themselves: every command, argument and option.

    python3 scripts/cli_docs.py            # rewrite docs/cli.md
    python3 scripts/cli_docs.py --check    # exit 1 when docs/cli.md is not what the code says

tests/unit/test_cli_docs.py runs the check, so a command or option that is added,
removed or changed without regenerating the page fails the fast test tier.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployer import errors  # noqa: E402
from deployer.cli.main import main  # noqa: E402

DOC = ROOT / "docs" / "cli.md"


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    out = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        path = f"{prefix} {name}"
        out.append((path, cmd))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, path))
    return out


def _type_name(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    t = param.type
    if isinstance(t, click.Choice):
        return " | ".join(t.choices)
    return getattr(t, "name", str(t)).lower()


def _default(param: click.Option) -> str:
    value = param.default
    if param.is_flag or value is None or value is False or value == () or "Sentinel" in type(value).__name__ \
            or "UNSET" in repr(value):
        return ""
    value = value() if callable(value) else value
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _options(cmd: click.Command) -> list[str]:
    rows = []
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.hidden:
            continue
        names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
        envvars = [p.envvar] if isinstance(p.envvar, str) else list(p.envvar or [])
        env = ", ".join(f"`{e}`" for e in envvars)
        rows.append(f"| {names} | {_cell(_type_name(p))} | {_default(p)} | {env} | {_cell(p.help or '')} |")
    if not rows:
        return []
    return ["| option | type | default | environment | meaning |", "| --- | --- | --- | --- | --- |", *rows, ""]


def _arguments(cmd: click.Command) -> list[str]:
    args = [p for p in cmd.params if isinstance(p, click.Argument)]
    if not args:
        return []
    return [", ".join(f"`{a.human_readable_name}`" + (" (one or more)" if a.nargs == -1 else "")
                      + ("" if a.required else " (optional)") for a in args), ""]


#: The scheme, code by code: what a script can rely on from every command.
SCHEME = [
    (errors.EXIT_OK, "ok", "The command did what was asked. `plan`, `status`, `services`: nothing differs."),
    (errors.EXIT_FAILED, "failed", "Something failed while working: a node or engine (unreachable, an error), a health "
     "check, the registry, Consul, a build, the lock held by another deployer. `plan` and `status`: a node could not "
     "be read. `apply`, `deploy` to several targets: some failed (`--json` says which)."),
    (errors.EXIT_CHANGES, "changes", "The command worked and the nodes differ from the repository: `plan` has changes "
     "pending, `status` found drift, `services` found a registration missing, critical or extra. Only these three "
     "commands exit 2 (as `terraform plan -detailed-exitcode` does)."),
    (errors.EXIT_BAD_INPUT, "bad input", "Nothing was tried: an invalid repository (`validate` found problems), an "
     "unknown or ambiguous target, a bad image reference, a bad option value, an unknown option or command, a missing "
     "argument (click's usage errors, which click itself exits 2 with, exit 3 here)."),
]


def _scheme() -> list[str]:
    lines = ["## Exit codes", "",
             "Every command exits with one of four codes (`deployer.errors`' `EXIT_*`):", "",
             "| exit | meaning | when |", "| --- | --- | --- |"]
    lines += [f"| {code} | {name} | {_cell(text)} |" for code, name, text in SCHEME]
    lines += ["", "A CI script in `-detailed-exitcode` style:", "", "```sh",
              "deployer plan --json > plan.json; rc=$?",
              "case $rc in 0) echo in sync ;; 2) deployer apply ;; 1) echo a node failed; exit 1 ;;",
              "  *) echo bad input: \"$(jq -r .error plan.json)\"; exit $rc ;; esac", "```", "",
              "`watch-builds` stopped by Ctrl-C exits 130. Errors print one line, `error: ...`, on stderr.",
              "With `--json`, stdout holds one JSON document: the command's result, or, when the command",
              "failed before it had one, `{\"error\": \"...\", \"exit_code\": N}` (usage errors too;",
              "the `error:` line still goes to stderr). By error type:", ""]
    return lines + _exit_codes()


def _environment() -> list[str]:
    return ["## The environment", "",
            "Every option can be set from the environment: `DEPLOYER_` + the command's words + the option's",
            "long name, upper case, `-` written `_` (`deploy --wait 30s` is `DEPLOYER_DEPLOY_WAIT=30s`,",
            "`node add --docker` is `DEPLOYER_NODE_ADD_DOCKER`, `--repo` is `DEPLOYER_REPO`; a flag takes",
            "`1`/`true` or `0`/`false`; an option given several times, like `--var`, takes its values separated",
            "by spaces). The command line wins over the environment. The names are in each command's table",
            "below. `DEPLOYER_DEBUG=1` logs everything at debug level on stderr.", "",
            "## Progress and colour", "",
            "The long commands (`deploy`, `rollback`, `scale`, `apply`, `restart`, `prune`, `image`, `release`)",
            "take `--progress`: `plain` prints each step as a line on stderr (`  dc/node: step`), `live` keeps one",
            "line per node updated in place (its current step, a bar while layers are pulled or pushed, the time",
            "taken) and a summary line per node at the end, `json` prints one JSON object a line on stderr per",
            "event: `{\"t\": unix time, \"target\": \"dc/node\" or null, \"event\": \"step\"|\"layer\"|\"done\"|\"failed\",",
            "\"step\": text}` (`layer` events add `layer`, `status`, `current`, `total`; a `done` or `failed` event",
            "per target and one with a null target end the stream), also with `--json` or `-q`. `auto`, the",
            "default, is `live` when stderr is a terminal and `CI` is unset, else `plain`. Colour is off with",
            "`--no-color` (`DEPLOYER_NO_COLOR=1`) or `NO_COLOR` set to anything non-empty.", "",
            "## Shell completion", "",
            "`deployer completion bash|zsh|fish` prints the script (see `deployer completion`); it completes",
            "commands, options, targets (`dc`, `dc/node`, `dc/node/service`, read from the repository without",
            "reaching an engine) and deploy's IMAGE (the compose files' images and the deploy log's).", ""]


def _exit_codes() -> list[str]:
    rows = []
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.DeployerError) and cls.__module__ == errors.__name__:
            doc = (cls.__doc__ or "").strip().split("\n")[0]
            rows.append((cls.exit_code, name, doc))
    lines = ["| exit | error | when |", "| --- | --- | --- |"]
    lines += [f"| {code} | `{name}` | {_cell(doc)} |" for code, name, doc in sorted(rows)]
    return lines


def render() -> str:
    ctx = click.Context(main, info_name="deployer", terminal_width=80, max_content_width=80)
    lines = [
        "# The `deployer` command",
        "",
        "Generated from the code by `python3 scripts/cli_docs.py`; `tests/unit/test_cli_docs.py` fails when",
        "this page and the commands disagree. `deployer COMMAND --help` prints the same.",
        "",
        "```",
        main.get_help(ctx).replace("Usage: deployer", "deployer", 1),
        "```",
        "",
        *_scheme(),
        "",
        *_environment(),
    ]
    for path, cmd in _commands(main, "deployer"):
        lines += [f"## `{path}`", ""]
        sub = click.Context(cmd, info_name=path)
        usage = " ".join(cmd.collect_usage_pieces(sub))
        lines += [f"    {path} {usage}".rstrip(), ""]
        if cmd.help:
            lines += [inspect.cleandoc(cmd.help).replace("\b\n", ""), ""]
        if isinstance(cmd, click.Group):
            lines += ["Commands: " + ", ".join(f"`{path} {n}`" for n in sorted(cmd.commands)), ""]
            continue
        lines += _arguments(cmd)
        lines += _options(cmd)
    return "\n".join(lines).rstrip() + "\n"


def main_(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run python3 scripts/cli_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_(sys.argv[1:]))
