"""The ``node`` group: add or remove nodes (Docker hosts) in the repository, each a commit.

The work is done by deployer.ops.nodes (``add_node``, ``remove_node``).
"""

from __future__ import annotations

import os

import click

from deployer.cli.completion import complete_targets
from deployer.cli.options import (QUIET_NOTHING, author_option, json_option, quiet_option, repo_root,
                                  verbose_option, wait_option)
from deployer.cli.output import print_json


@click.group()
def node() -> None:
    """Add or remove nodes (Docker hosts) in the repository."""


@node.command(name="add")
@click.argument("target", metavar="DC/NODE", shell_complete=complete_targets("dc"))
@click.option("--docker", "docker_url", required=True, metavar="URL",
              help="unix:///var/run/docker.sock | ssh://user@host[:port] | tcp://host:2376")
@click.option("--accept-host-key", is_flag=True, help="Trust and pin the SSH host key the node presents now.")
@click.option("--identity-file", type=click.Path(), help="SSH private key for this node.")
@click.option("--tls-ca", type=click.Path(), help="CA certificate (tcp:// nodes).")
@click.option("--tls-cert", type=click.Path(), help="Client certificate (tcp:// nodes).")
@click.option("--tls-key", type=click.Path(), help="Client key (tcp:// nodes).")
@click.option("--address", help="The address other hosts reach this node's published ports on.")
@click.option("--description")
@author_option
@wait_option
@json_option()
@quiet_option(QUIET_NOTHING)
@verbose_option()
@click.pass_context
def node_add(ctx, target, docker_url, accept_host_key, identity_file, tls_ca, tls_cert, tls_key, address,
             description, author, wait, as_json, quiet, verbose):
    """Record a node: pin its SSH host key, check its engine answers, commit node.yml."""
    from deployer.ops.nodes import add_node

    tls = None
    if tls_ca or tls_cert or tls_key:
        tls = {k: os.path.abspath(v) for k, v in (("ca", tls_ca), ("cert", tls_cert), ("key", tls_key)) if v}
    result = add_node(repo_root(ctx), target, docker_url, accept_host_key=accept_host_key,
                      identity_file=os.path.abspath(identity_file) if identity_file else None, tls=tls,
                      address=address, description=description, author=author, wait=wait)
    if as_json:
        print_json(result.to_json())
        return
    if result.host_key is not None:
        click.echo(f"host key {result.host_key.type} {result.host_key.fingerprint}"
                   + (" (accepted and pinned)" if result.host_key_accepted else " (already known, pinned)"))
    click.echo(f"add node {result.target}: engine {result.engine_version or '?'} answers [{result.commit[:7]}]")


@node.command(name="rm")
@click.argument("target", metavar="DC/NODE", shell_complete=complete_targets("node"))
@author_option
@wait_option
@json_option("Print what was removed and the commit as JSON.")
@quiet_option(QUIET_NOTHING)
@verbose_option()
@click.pass_context
def node_rm(ctx, target, author, wait, as_json, quiet, verbose):
    """Remove a node that no longer has containers written for it, and commit."""
    from deployer.ops.nodes import remove_node

    result = remove_node(repo_root(ctx), target, author=author, wait=wait)
    if as_json:
        print_json(result.to_json())
        return
    click.echo(f"remove node {target} [{result.commit[:7]}]")


COMMANDS = (node,)
