"""CLI commands for building and releasing: build, image, release, watch-builds, builders ls|build.

Added to the main group by deployer.cli.main, with its conventions: ``--json`` for
machines, progress lines on stderr (``--quiet`` turns them off), errors as one
line on stderr with a non-zero exit. A failed build prints the compiler's
output above that line. The work is done in deployer.build.builders and
deployer.ops.release; this module parses and prints, and turns docker's build and
push events into progress lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time

import click

from deployer.cli.completion import complete_targets
from deployer.cli.options import (POSITIVE_DURATION, author_option, batch_option, health_timeout_option,
                                  json_option, message_option, no_consul_option, progress_options, quiet_option,
                                  repo_root, service_option, settle_option, swap_settings, verbose_option, wait_option)
from deployer.cli.output import echo_during_progress, end_progress, print_deploy_result, print_json, progress, table
from deployer.errors import BuildFailed, DeployerError

WATCH_HELP = """Build, push (and deploy) each new commit of SOURCE_REPO's branches, once, in order.

Polls the branches every --interval: with `git fetch` when a branch has a
remote (its upstream, else origin), else the local branch head (a bare
repository that is pushed to). Every new commit (the branch's first-parent
line) is queued and built from a clean checkout of that commit, in the order
the commits came, at most --jobs at a time; tagged REGISTRY/APP:VERSION (its
git tag, else the short commit) and pushed. With --deploy (one --branch) the
branch head's image is then deployed to the targets (the registry defaults to
theirs). The first run builds only the current head.

The queue is recorded in SOURCE_REPO's git dir (deployer-builds.json, or
--state FILE; written durably after every change), so a restarted watcher,
even one killed mid-build, resumes where it stopped and builds nothing twice.
A compile error is printed (compiler output, then one line), recorded as
failed and not retried; the queue goes on with the next commit. Push,
registry and engine failures are retried on the next poll. --once processes
what is new and exits (1 if something failed).

Two watchers of one source repository that build on one engine (two
machines, two clones) build each commit once: a build holds a claim on the
build engine (a lock object like the node locks'); a commit another watcher
holds is looked at again on the next poll, and is then in the registry.

As a post-receive hook of the source repository (bare or not), in the
background so the push returns at once:

\b
    #!/bin/sh
    # hooks/post-receive  (chmod +x)
    exec >>"$HOME/deployer-builds.log" 2>&1
    nohup deployer --repo /srv/infra watch-builds "$(pwd)" --once \\
        --deploy prod/web1 </dev/null &

Hooks run in the repository's git dir with GIT_DIR set; the command ignores
GIT_DIR and the other variables git exports to hooks. Two runs at once wait
for each other (a lock beside the state file).
"""


class BuildLines:
    """Docker's build and push events as progress lines on stderr.

    Status messages are shown, and the steps of a (rare, slow) builder image
    build; the compiler's and docker build's output only with ``verbose`` (a
    failure prints it anyway).
    Push progress is one line per layer and status, and at most one line a
    second per layer while it uploads.
    """

    #: The target the image's build and push steps show under in the live and JSON views.
    TARGET = "image"

    def __init__(self, quiet: bool = False, verbose: bool = False, sink=None):
        self.quiet = quiet
        self.verbose = verbose
        self._layers: dict[str, tuple[str, float]] = {}
        # the command's progress sink, when it keeps lines per target (live, json): steps and push bars go there
        for_target = getattr(sink, "for_target", None)
        self._view = for_target(self.TARGET) if for_target is not None else None

    def __call__(self, phase: str, event: dict) -> None:
        if (self.quiet and self._view is None) or "error" in event or "aux" in event:
            return
        if phase == "push":
            if self._view is not None and event.get("id"):
                detail = event.get("progressDetail") or {}
                self._view.layer(event["id"], event.get("status", ""), detail.get("current"), detail.get("total"))
                return
            self._push(event)
            return
        status, stream = event.get("status"), event.get("stream")
        if status and not event.get("id"):
            self._echo(f"{phase}: {status}")
        elif stream and stream.strip():
            line = stream.rstrip("\n")
            if self.verbose or (phase == "builder" and line.startswith("Step ")) \
                    or (phase == "image" and line.startswith("Successfully built")):
                self._echo(f"{phase}: {line}")

    def _push(self, event: dict) -> None:
        status = event.get("status", "")
        layer = event.get("id")
        if not layer:
            if status:
                self._echo(f"push: {status}")
            return
        now = time.monotonic()
        last_status, last_time = self._layers.get(layer, ("", 0.0))
        if status != last_status or (event.get("progress") and now - last_time >= 1.0):
            self._layers[layer] = (status, now)
            self._echo(f"push: {layer}: {status} {event.get('progress') or ''}".rstrip())

    def _echo(self, text: str) -> None:
        if self._view is not None:
            self._view(text)
        else:
            click.echo(f"  {text}", err=True)


@contextlib.contextmanager
def compiler_output():
    """A failed build shows the compiler's output on stderr, then (the group prints) the one-line error."""
    try:
        yield
    except BuildFailed as exc:
        if exc.output and exc.output.strip():
            click.echo(exc.output.rstrip("\n"), err=True)
        raise


def _image_line(result) -> str:
    if result.built and result.pushed:
        return (f"{result.ref}: built in {result.build_seconds:.1f}s, pushed in {result.push_seconds:.1f}s "
                f"({result.digest})")
    if result.built:
        return f"{result.ref}: built in {result.build_seconds:.1f}s, not pushed ({result.image_id[:19]})"
    if result.pushed:
        return f"{result.ref}: built before from {result.revision[:12]}; pushed in {result.push_seconds:.1f}s"
    if result.digest:
        return f"{result.ref}: in the registry already, built from {result.revision[:12]}"
    return f"{result.ref}: built before from {result.revision[:12]}; not pushed"


def _outcome_lines(outcome, targets: list[str]) -> None:
    short = outcome.revision[:12]
    if outcome.status == "failed":
        if outcome.output.strip():
            click.echo(outcome.output.rstrip("\n"), err=True)
        click.echo(f"error: {short} ({outcome.subject}): {outcome.error}", err=True)
    elif outcome.status == "retry":
        click.echo(f"error: {short}: {outcome.error}; trying again on the next poll", err=True)
    elif outcome.status == "elsewhere":
        click.echo(f"{short} ({outcome.subject}): {outcome.error}; looking again on the next poll", err=True)
    elif outcome.built:
        click.echo(f"{short} {outcome.ref}: built and pushed ({outcome.seconds:.1f}s)")
    else:
        click.echo(f"{short} {outcome.ref}: in the registry ({outcome.seconds:.1f}s)")
    if outcome.deploy == "deployed":
        click.echo(f"{short} deployed {outcome.ref} to {', '.join(targets)} [{outcome.deploy_commit[:7]}]")
    elif outcome.deploy == "unchanged":
        click.echo(f"{short} {', '.join(targets)} already run {outcome.ref}")
    elif outcome.deploy == "failed":
        click.echo(f"error: {short}: deploy of {outcome.ref} failed: {outcome.deploy_error}", err=True)
    elif outcome.deploy == "retry":
        click.echo(f"error: {short}: deploy of {outcome.ref} failed: {outcome.deploy_error}; "
                   "trying again on the next poll", err=True)


# The options only the build commands take.
docker_option = click.option(
    "--engine", "--docker", "docker_url", metavar="URL", envvar="DOCKER_HOST", show_envvar=True,
    help="The Docker engine that builds: unix://PATH, ssh://[user@]host[:port] or tcp://host:port (TLS with "
         "DOCKER_TLS_VERIFY, files from DOCKER_CERT_PATH). Default: the datacenter.yml builder, else "
         "unix:///var/run/docker.sock.")
builders_from_option = click.option(
    "--builders-from", metavar="URL|here",
    help="Where a builder image the engine lacks is made, then moved to it (docker save | load): 'here' is the "
         "build engine itself. Default: the build engine for a unix:// one, else unix:///var/run/docker.sock.")
builder_option = click.option("--builder", metavar="TECH",
                              help="go, python, ... (default: deployer.yml's builder, else detected).")
registry_option = click.option("--registry", metavar="HOST:PORT", help="The registry to push to.")
dirty_option = click.option("--allow-dirty", is_flag=True,
                            help="Build uncommitted changes too (the version gets -dirty).")
build_verbose_option = verbose_option("Also show the compiler's and docker build's output.")


@click.command()
@click.argument("app_source")
@builder_option
@click.option("--out", metavar="DIR", help="Where the binaries go (replaced as a whole, only on success; "
                                           "default: the cache's artifacts/APP).")
@docker_option
@builders_from_option
@json_option()
@quiet_option()
@build_verbose_option
def build(app_source, builder, out, docker_url, builders_from, as_json, quiet, verbose):
    """Compile APP_SOURCE in its builder container and list the files made.

    Needs no git and no registry. A compile error prints the compiler's
    output and exits 1; the --out directory is then left as it was.
    """
    from deployer.build import builders as B
    from deployer.ops.build_engine import ImagesFrom
    from deployer.ops.release import build_client

    client = build_client(docker_url)
    images_from = ImagesFrom(builders_from, client)
    with contextlib.closing(client), contextlib.closing(images_from), compiler_output():
        result = B.build(client, app_source, builder, out, progress=BuildLines(quiet or as_json, verbose),
                         images_from=images_from)
    if as_json:
        print_json({"builder": result.builder, "builder_image": result.builder_image,
                    "artifacts_dir": str(result.artifacts_dir), "binaries": [str(p) for p in result.binaries],
                    "seconds": round(result.seconds, 3)})
        return
    for path in result.binaries:
        click.echo(str(path))
    files = f"{len(result.binaries)} file{'' if len(result.binaries) == 1 else 's'}"
    click.echo(f"{result.builder} build of {app_source}: {files} in {result.seconds:.1f}s", err=True)


@click.command()
@click.argument("app_source")
@registry_option
@click.option("--dc", metavar="DC", help="Push to the registry the datacenter's datacenter.yml names "
                                         "(in --repo).", shell_complete=complete_targets("dc"))
@dirty_option
@click.option("--no-push", is_flag=True, help="Build and tag REGISTRY/APP:VERSION here; do not push.")
@builder_option
@docker_option
@builders_from_option
@json_option()
@quiet_option()
@build_verbose_option
@progress_options
@click.pass_context
def image(ctx, app_source, registry, dc, allow_dirty, no_push, builder, docker_url, builders_from, as_json, quiet,
          verbose):
    """Build APP_SOURCE's image REGISTRY/APP:VERSION and push it.

    VERSION is the git tag on HEAD, else the short commit. Uncommitted
    changes are refused unless --allow-dirty. When the registry holds
    that tag built from the same commit already, nothing is built.
    """
    from deployer.build import image as B
    from deployer.ops.release import build_client, credentials_for, image_to_json, registry_for

    if registry and dc:
        raise click.UsageError("give --registry or --dc, not both")
    if not registry and not dc:
        raise click.UsageError("where to push: --registry HOST:PORT, or --dc DC (its datacenter.yml's registry)")
    from deployer.ops.build_engine import ImagesFrom, datacenter_builder

    credentials, builder_node = None, None
    if dc:
        from deployer.config.loader import load

        infra = load(repo_root(ctx))
        registry = registry_for(infra, dc=dc)
        credentials = credentials_for(infra, dc=dc)
        builder_node = None if docker_url else datacenter_builder(infra, dc=dc)
    else:
        registry = registry_for(None, explicit=registry)
    client = build_client(docker_url, node=builder_node, root=repo_root(ctx) if builder_node else None)
    images_from = ImagesFrom(builders_from, client)
    with contextlib.closing(client), contextlib.closing(images_from), compiler_output():
        result = B.build_image(client, app_source, registry, allow_dirty, builder=builder, push=not no_push,
                               progress=BuildLines(quiet or as_json, verbose, progress(quiet or as_json)),
                               credentials_file=credentials, images_from=images_from)
    end_progress()
    if as_json:
        print_json(image_to_json(result))
    else:
        click.echo(_image_line(result))


@click.command()
@click.argument("app_source")
@click.argument("targets", nargs=-1, required=True, shell_complete=complete_targets())
@registry_option
@service_option
@batch_option
@dirty_option
@builder_option
@docker_option
@builders_from_option
@wait_option
@author_option
@message_option
@settle_option
@health_timeout_option
@no_consul_option
@json_option()
@quiet_option()
@build_verbose_option
@progress_options
@click.pass_context
def release(ctx, app_source, targets, registry, service, batch, allow_dirty, builder, docker_url, builders_from, wait,
            author, message, settle, health_timeout, no_consul, as_json, quiet, verbose):
    """Build APP_SOURCE's image, push it, deploy it to TARGETS: one commit.

    The image is REGISTRY/APP:VERSION, REGISTRY being the one the
    targets' datacenter.yml names (registry: HOST:PORT) unless
    --registry. The targets are checked first (as deploy --dry-run
    would); a failed build or push deploys nothing. Nodes pull the image
    from the registry.
    """
    from deployer.errors import PartialDeploy
    from deployer.ops.build_engine import ImagesFrom
    from deployer.ops.release import ReleaseOptions, release as do_release

    client = _build_client_for(ctx, docker_url, targets=list(targets))
    images_from = ImagesFrom(builders_from, client)
    try:
        with contextlib.closing(client), contextlib.closing(images_from), compiler_output():
            options = ReleaseOptions(
                app_source, list(targets), repo_root(ctx), allow_dirty=allow_dirty, builder=builder,
                registry=registry, service=service, wait=wait, message=message, author=author,
                swap=swap_settings(settle, health_timeout), batch=batch, consul=not no_consul,
                images_from=images_from)
            sink = progress(quiet or as_json)
            result = do_release(client, options, progress=sink,
                                build_progress=BuildLines(quiet or as_json, verbose, sink),
                                on_image=None if as_json else lambda image: echo_during_progress(_image_line(image)))
    except PartialDeploy as exc:
        print_deploy_result(exc.result, as_json)
        raise
    if as_json:
        print_json(result.to_json())
        return
    print_deploy_result(result.deploy, False)


def _build_client_for(ctx, docker_url, *, targets=(), dc=None, infra=None):
    """--engine (or DOCKER_HOST), else the builder: of the targets' datacenter, else the local socket."""
    from deployer.ops.build_engine import build_client, datacenter_builder

    if docker_url or os.environ.get("DOCKER_HOST"):
        return build_client(docker_url)
    root = repo_root(ctx)
    if infra is None:
        from deployer.config.loader import load

        infra = load(root)
    node = datacenter_builder(infra, targets=targets, dc=dc)
    return build_client(node=node, root=root) if node is not None else build_client()


@click.command(name="watch-builds", help=WATCH_HELP)
@click.argument("source_repo")
@click.option("--branch", "branches", multiple=True, default=("main",), show_default=True, metavar="BRANCH",
              help="A branch to follow; repeatable: every new commit of each is queued.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="At most N builds at a time (started in the order the commits came).")
@click.option("--app", metavar="SUBDIR", help="The app's directory inside the repository "
                                              "(default: SOURCE_REPO's place in its working tree, else the top).")
@click.option("--interval", type=POSITIVE_DURATION, default="10s", show_default=True,
              help="How often to look for new commits (500ms, 10s, 2m...).")
@click.option("--deploy", "deploy_targets", multiple=True, metavar="TARGET", shell_complete=complete_targets(),
              help="Deploy the head's image to TARGET (dc, dc/node, dc/node/service); repeatable.")
@registry_option
@click.option("--dc", metavar="DC", help="Without --deploy: push to DC's registry (datacenter.yml).",
              shell_complete=complete_targets("dc"))
@service_option
@click.option("--once", is_flag=True, help="Process what is new, then exit (1 if something failed).")
@click.option("--state", "state_path", metavar="FILE",
              help="The build record (default: SOURCE_REPO's git dir/deployer-builds.json).")
@builder_option
@docker_option
@wait_option
@message_option
@settle_option
@health_timeout_option
@no_consul_option
@json_option("One JSON object per processed commit on stdout.")
@quiet_option()
@build_verbose_option
@click.pass_context
def watch_builds(ctx, source_repo, branches, jobs, app, interval, deploy_targets, registry, dc, service, once,
                 state_path, builder, docker_url, wait, message, settle, health_timeout, no_consul, as_json,
                 quiet, verbose):
    from deployer.gitrepo.git import forget_hook_env
    from deployer.ops.build_claims import EngineClaims
    from deployer.ops.release import BuildWatcher, build_client, credentials_for, registry_for

    forget_hook_env()  # run from a git hook: GIT_DIR would redirect every git command
    targets = list(deploy_targets)
    if registry and dc:
        raise click.UsageError("give --registry or --dc, not both")
    infra_root, credentials, infra = None, None, None
    if targets or dc:
        from deployer.config.loader import load

        infra_root = repo_root(ctx)
        infra = load(infra_root)
        registry = registry_for(infra, targets=targets, dc=dc, explicit=registry)
        credentials = credentials_for(infra, targets=targets, dc=dc)
    elif not registry:
        raise click.UsageError("where to push: --registry HOST:PORT, --dc DC, or --deploy TARGET "
                               "(the registry of its datacenter)")
    else:
        registry = registry_for(None, explicit=registry)

    def report(outcome) -> None:
        if as_json:
            click.echo(json.dumps(outcome.to_json()))
        else:
            _outcome_lines(outcome, targets)
        sys.stdout.flush()  # a line per commit as it happens, also into a pipe (a log shipper, a test)

    def on_error(exc: Exception) -> None:
        text = exc.one_line() if isinstance(exc, DeployerError) else " ".join(str(exc).split())
        click.echo(f"error: {text or type(exc).__name__}; trying again in {interval:g}s", err=True)

    client = _build_client_for(ctx, docker_url, targets=targets, dc=dc, infra=infra) if infra is not None \
        else build_client(docker_url)
    watcher = BuildWatcher(
        client, source_repo, registry=registry, branch=list(branches), app=app, deploy=targets,
        infra_root=infra_root, jobs=jobs, claims=EngineClaims(client, progress=progress(quiet or as_json)),
        service=service, builder=builder, wait=wait, message=message,
        swap=swap_settings(settle, health_timeout), consul=not no_consul, state_path=state_path,
        progress=progress(quiet or as_json), build_progress=BuildLines(quiet or as_json, verbose),
        credentials_file=credentials,
        report=report)
    say = progress(quiet or as_json)
    if not once:
        say(f"watching {watcher.repo.path} {', '.join(branches)} every {interval:g}s"
            + (f", {jobs} builds at a time" if jobs > 1 else "") + f"; pushing to {registry}"
            + (f", deploying to {', '.join(targets)}" if targets else ""))
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # SIGTERM: finish the commit at hand, then stop
        previous = signal.signal(signal.SIGTERM, lambda *_: watcher.stop.set())
    try:
        with contextlib.closing(client):
            ok = watcher.run(interval, once=once, on_error=on_error)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
        sys.exit(130)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if once and not watcher.processed and ok:
        say(f"nothing new on {', '.join(branches)}")
    if once and not ok:
        sys.exit(1)


builder_dc_option = click.option("--dc", metavar="DC", shell_complete=complete_targets("dc"),
                         help="The engine the datacenter's datacenter.yml names (builder:), in --repo.")


def _client(ctx, docker_url, dc):
    from deployer.ops.build_engine import build_client, datacenter_builder

    if docker_url and dc:
        raise click.UsageError("give --engine or --dc, not both")
    if dc:
        from deployer.config.loader import load

        root = repo_root(ctx)
        node = datacenter_builder(load(root), dc=dc)
        if node is None:
            raise click.UsageError(f"datacenter {dc} names no builder: in its datacenter.yml")
        return build_client(node=node, root=root)
    return build_client(docker_url)


def _size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n else "-"


@click.group()
def builders():
    """The builder images on a build engine: list them, (re)build them from builders/."""


@builders.command(name="ls")
@docker_option
@builder_dc_option
@json_option()
@quiet_option()
@verbose_option()
@click.pass_context
def ls(ctx, docker_url, dc, as_json, quiet, verbose):
    """List the builder images on the engine: technology, tag (builders/'s content hash), image ID,
    size, and whether it is current (the tag builders/<tech> gives now), stale (an older hash) or
    missing (builders/ has the technology, the engine lacks its current image)."""
    from deployer.ops.build_engine import list_builder_images

    client = _client(ctx, docker_url, dc)
    with contextlib.closing(client):
        rows = list_builder_images(client)
    if as_json:
        print_json({"engine": client.api.deployer_url, "builders": [r.to_json() for r in rows]})
        return
    table([[r.tech, r.ref, r.image_id[7:19] if r.image_id else "-", _size(r.size),
            "current" if r.current else ("missing" if not r.image_id else "stale")] for r in rows],
          ["TECH", "IMAGE", "ID", "SIZE", "STATE"])


@builders.command(name="build")
@click.argument("techs", metavar="[TECH]...", nargs=-1)
@docker_option
@builder_dc_option
@builders_from_option
@json_option()
@quiet_option()
@verbose_option("Also show docker build's output.")
@click.pass_context
def builders_build(ctx, techs, docker_url, dc, builders_from, as_json, quiet, verbose):
    """Make the current builder image of each TECH (default: every technology in builders/) on the
    engine, unless it is there: built on the engine, or made where --builders-from says and moved."""
    from deployer.build import builders as B
    from deployer.ops.build_engine import ImagesFrom, build_builder_images

    client = _client(ctx, docker_url, dc)
    images_from = ImagesFrom(builders_from, client)
    with contextlib.closing(client), contextlib.closing(images_from), compiler_output():
        done = build_builder_images(client, list(techs) or B.available_builders(), images_from=images_from,
                                    progress=BuildLines(quiet or as_json, verbose))
    if as_json:
        print_json({"engine": client.api.deployer_url, "builders": [d.to_json() for d in done]})
        return
    for d in done:
        what = "present already" if d.status == "present" else f"made in {d.seconds:.1f}s"
        click.echo(f"{d.tech}: {d.ref} {what}")


COMMANDS = (build, image, release, watch_builds, builders)
