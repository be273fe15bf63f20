"""Shell completion: ``deployer completion bash|zsh|fish``, and what TARGET and IMAGE arguments complete to.

The script is click's own (``_DEPLOYER_COMPLETE=<shell>_source``), printed by a
command so that it can be documented and tested. Targets (``dc``, ``dc/node``,
``dc/node/service``) are read from the repository with the loader: no engine is
reached, and a repository that does not load completes nothing, silently. An
IMAGE completes to the images the compose files name and the deploy log's
images (one ``git log``).

Only click and the shared modules are imported here; the loader and git only
while completing.
"""

from __future__ import annotations

import os
from typing import Callable

import click
from click.shell_completion import CompletionItem, get_completion_class

from deployer.cli.options import QUIET_NOTHING, VERBOSE_NOTHING, quiet_option, verbose_option

#: The variable click's completion protocol reads (``_DEPLOYER_COMPLETE=bash_complete``).
COMPLETE_VAR = "_DEPLOYER_COMPLETE"
SHELLS = ("bash", "zsh", "fish")
#: The deploy log entries IMAGE completion reads (newest first).
HISTORY_LIMIT = 500


def _repo_path(ctx: click.Context) -> str:
    root = ctx.find_root()
    return root.params.get("repo") or os.environ.get("DEPLOYER_REPO") or "."


def _infra(ctx: click.Context):
    """The repository ``--repo`` names, or None when it does not load (completion never fails)."""
    try:
        from deployer.config.loader import find_root, load

        return load(find_root(_repo_path(ctx)))
    except Exception:  # noqa: BLE001 - a broken repository completes nothing; never a traceback in a shell
        return None


def target_names(infra, kinds: tuple[str, ...]) -> list[str]:
    """Every ``dc`` / ``dc/node`` / ``dc/node/service`` of ``infra``, for the kinds asked, sorted."""
    names: list[str] = []
    if "dc" in kinds:
        names += sorted(infra.datacenters)
    if "node" in kinds:
        names += [f"{n.dc}/{n.name}" for n in infra.nodes()]
    if "service" in kinds:
        names += [f"{s.dc}/{s.node}/{s.name}" for s in infra.services()]
    return sorted(set(names))


def complete_targets(*kinds: str) -> Callable:
    """A ``shell_complete`` callback for a target argument or option: the repository's targets of ``kinds``."""
    kinds = kinds or ("dc", "node", "service")

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        infra = _infra(ctx)
        if infra is None:
            return []
        return [CompletionItem(t) for t in target_names(infra, kinds) if t.startswith(incomplete)]

    return complete


def image_names(infra) -> list[str]:
    """The images the compose files name, then those the deploy log names (deployed, or replaced)."""
    names = {s.image for s in infra.services() if s.image}
    try:
        from deployer.gitrepo.repo import InfraRepo

        with InfraRepo.open(infra.root) as repo:
            entries = repo.deploy_log(None, HISTORY_LIMIT)
    except Exception:  # noqa: BLE001 - no git, no history: the compose files' images are enough
        entries = []
    for entry in entries:
        names.update(i for i in (entry.image, entry.previous_image) if i)
    return sorted(names)


def complete_images(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``shell_complete`` for deploy's IMAGE: image references from the compose files and the deploy log."""
    infra = _infra(ctx)
    if infra is None:
        return []
    return [CompletionItem(i) for i in image_names(infra) if i.startswith(incomplete)]


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@quiet_option(QUIET_NOTHING)
@verbose_option(VERBOSE_NOTHING)
@click.pass_context
def completion(ctx: click.Context, shell: str, quiet: bool, verbose: bool) -> None:
    """Print the completion script for SHELL: commands, options, targets and images.

    \b
      bash:  eval "$(deployer completion bash)"        (in ~/.bashrc)
      zsh:   eval "$(deployer completion zsh)"         (in ~/.zshrc)
      fish:  deployer completion fish > ~/.config/fish/completions/deployer.fish

    Targets (dc, dc/node, dc/node/service) and deploy's IMAGE are read from
    the repository (--repo or DEPLOYER_REPO) as you type; no engine is reached.
    Bash splits words at ':' (COMP_WORDBREAKS), so an image's tag completes
    there only with COMP_WORDBREAKS=${COMP_WORDBREAKS//:} in ~/.bashrc; zsh
    and fish need nothing.
    """
    root = ctx.find_root()
    cls = get_completion_class(shell)
    click.echo(cls(root.command, {}, "deployer", COMPLETE_VAR).source())


COMMANDS = (completion,)
