"""What the commands print: tables, ``--json``, progress lines, a deploy's result.

Data goes to stdout (a table or JSON); progress goes to stderr (cli.progress:
lines indented by two spaces, a live view, or JSON events), so ``--json``
output stays parseable. Printing a result ends the progress first.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

import click

from deployer.cli.options import JSON_PRINTED_META


def progress(quiet: bool) -> Callable[[str], None]:
    """The command's progress sink (cli.progress), as ``--progress`` picks it: plain lines on stderr by
    default, nothing when ``quiet`` (unless ``--progress json``). Ended by :func:`end_progress`
    before the result prints, or by the group when the command fails."""
    from deployer.cli.progress import PROGRESS_META, SINK_META, make_sink

    ctx = click.get_current_context(silent=True)
    meta = ctx.meta if ctx is not None else {}
    if SINK_META not in meta:  # a command asking twice (watch-builds) gets the same sink
        meta[SINK_META] = make_sink(meta.get(PROGRESS_META, "auto"), quiet)
    return meta[SINK_META]


def echo_during_progress(text: str) -> None:
    """A result line printed while the progress still runs (release's image line): above a live view."""
    from deployer.cli.progress import SINK_META

    ctx = click.get_current_context(silent=True)
    sink = ctx.meta.get(SINK_META) if ctx is not None else None
    if sink is not None and hasattr(sink, "above"):
        sink.above(text)
    else:
        click.echo(text)


def end_progress(error: str | None = None, failed: list[str] | None = None) -> None:
    """End the command's progress sink, if it has one: the live view stops and prints its summary;
    the JSON one prints its done/failed events. Called again, it does nothing."""
    from deployer.cli.progress import SINK_META

    ctx = click.get_current_context(silent=True)
    sink = ctx.meta.pop(SINK_META, None) if ctx is not None else None
    if sink is not None:
        sink.close(error=error, failed=failed)


def table(rows: Iterable[Iterable[Any]], headers: list[str]) -> None:
    """Rows as left-aligned columns under upper-case headers (None prints as nothing)."""
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def print_json(data: Any) -> None:
    """``data`` as one JSON document on stdout (noted, so that an error after it does not print a second one)."""
    end_progress()
    click.echo(json.dumps(data, indent=2, sort_keys=False))
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[JSON_PRINTED_META] = True


def print_error_json(message: str, exit_code: int) -> None:
    """An error under ``--json``: ``{"error": "...", "exit_code": N}`` on stdout (the one line goes to stderr too)."""
    click.echo(json.dumps({"error": message, "exit_code": exit_code}))


def print_deploy_result(result, as_json: bool) -> None:
    """A deploy's or rollback's result (also a release's deploy): the dry-run diff, failures, the commit line."""
    end_progress(failed=[t.target for t in result.targets if t.error])
    if as_json:
        print_json(result.to_json())
        return
    if result.dry_run:
        for t in result.targets:
            click.echo(f"dry run: {result.action} {t.target}: {t.previous_image or '(new service)'} -> {result.image}")
            click.echo(t.diff.rstrip("\n") if t.diff else "repository: no change")
            if t.change is not None:
                click.echo(f"container: {t.change.summary()}")
        return
    for t in result.targets:  # the steps were shown as progress while they happened
        if t.error:
            click.echo(f"{t.target}: FAILED: {t.error}")
        elif getattr(t, "rolled_back", False):
            click.echo(f"{t.target}: rolled back to {t.previous_image}")
        elif getattr(t, "rollback_error", None):
            click.echo(f"{t.target}: runs {t.image}: could not roll back: {t.rollback_error}")
    kept = [t for t in result.targets if not t.error and not getattr(t, "rolled_back", False)]
    if result.commit:
        committed = [t for t in kept if getattr(t, "committed", False)] or kept
        olds = {t.previous_image for t in committed}
        old = olds.pop() if len(olds) == 1 else "(various)"
        news = {getattr(t, "image", None) or result.image for t in committed}
        names = ", ".join(t.target for t in committed if getattr(t, "committed", False)) or result.target
        click.echo(f"{result.action} {names}: {old or '(new service)'} -> "
                   f"{news.pop() if len(news) == 1 else '(various)'} [{result.commit[:7]}] ({result.seconds:.1f}s)")
        return
    for t in kept:
        if getattr(t, "rollback_error", None):
            continue
        if t.change is None and getattr(result, "stopped", None):
            click.echo(f"{t.target}: not attempted")
            continue
        if t.change is not None and t.change.action != "none":
            click.echo(f"{t.target}: {result.image} is already written; repaired the container "
                       f"({t.change.action}), no commit")
        else:
            click.echo(f"{t.target}: already runs {result.image}; nothing to do")
