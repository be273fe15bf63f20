"""``prune``: remove the images on the nodes that no service needs; the work is deployer.ops.prune."""

from __future__ import annotations

import sys

import click

from deployer.cli.completion import complete_targets
from deployer.cli.options import (json_option, parallel_option, progress_options, quiet_option, repo_root,
                                  verbose_option, wait_option)
from deployer.cli.output import end_progress, print_json, progress

PRUNE_HELP = """Remove the images on the nodes that no service needs (exit 1 if a node failed).

\b
An image stays when
  - any container on the engine uses it (running or stopped, the deployer's or not);
  - it is one of the last N versions (--keep) of a service of the node, from git
    history, or the image a compose file names: rollback stays a local start;
  - any of its tags or digests is in a repository no service of the node has
    ever run, per git history: images the deployer did not put there are left alone.

Dangling images (no tag, no digest) go too. Naming dc/node/service prunes only
the images of that service's repositories (no dangling ones); what every service of the node keeps stays.

Runs under the repository lock, without a commit: while a deploy holds it, prune
waits (--wait) or fails naming the holder. Sizes are each image's whole size, so
layers shared between images are counted in each: the disk freed can be less.
"""


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


@click.command(help=PRUNE_HELP)
@click.argument("targets", nargs=-1, shell_complete=complete_targets())
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True, metavar="N",
              help="Keep the images of the last N versions of each service (from git history).")
@click.option("--dry-run", is_flag=True, help="List the images that would go; remove nothing (takes no lock).")
@wait_option
@parallel_option
@json_option()
@quiet_option()
@verbose_option()
@progress_options
@click.pass_context
def prune(ctx, targets, keep, dry_run, wait, parallel, as_json, quiet, verbose):
    from deployer.ops.prune import prune as prune_images

    results = prune_images(repo_root(ctx), list(targets) or None, keep=keep, dry_run=dry_run, wait=wait,
                           parallel=parallel, progress=progress(quiet or as_json or dry_run))
    end_progress(failed=[r.node for r in results if r.error])
    if as_json:
        print_json([r.to_json() for r in results])
    else:
        verb = "would remove" if dry_run else "removed"
        for r in results:
            if r.error:
                click.echo(f"{r.node}: FAILED {r.error}")
                continue
            if dry_run:
                for image in r.removed:
                    click.echo(f"{r.node}: would remove {', '.join(image.references) or '<none>'} "
                               f"({image.id[7:19]}, {_size(image.size)})")
            for image in r.refused:
                click.echo(f"{r.node}: kept {', '.join(image.references) or image.id[7:19]}: {image.kept}")
            click.echo(f"{r.node}: {verb} {len(r.removed)} images, {_size(r.bytes)} "
                       f"(shared layers counted in each), {r.stayed + len(r.refused)} stay")
    if any(r.error for r in results):
        sys.exit(1)


COMMANDS = (prune,)
