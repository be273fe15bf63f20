"""The progress sinks (cli.progress): plain lines as before, JSON events, the live view drawn by rich,
--progress and its environment variable, NO_COLOR and --no-color."""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace as NS

import click
import pytest
from click.testing import CliRunner

from deployer.cli.main import main
from deployer.cli.options import NO_COLOR_META, colour_allowed
from deployer.cli.progress import JsonSink, LiveSink, NullSink, PlainSink, choose_mode, make_sink
from deployer.ops.targets import target_progress
from tests.support.repos import make_repo, web_compose

ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-9]|9[0-7]|38;)[0-9;]*m")
ANSI = re.compile(r"\x1b\[")


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# -- choosing ------------------------------------------------------------------------------------


def test_auto_is_live_on_a_terminal_only_and_never_in_ci():
    assert choose_mode("auto", Tty(), {"TERM": "xterm"}) == "live"
    assert choose_mode("auto", io.StringIO(), {"TERM": "xterm"}) == "plain"
    assert choose_mode("auto", Tty(), {"TERM": "xterm", "CI": "true"}) == "plain"
    assert choose_mode("auto", Tty(), {"TERM": "dumb"}) == "plain"
    assert choose_mode("json", io.StringIO(), {}) == "json" and choose_mode("live", io.StringIO(), {}) == "live"


def test_quiet_shows_nothing_but_json_asked_for_by_name():
    assert isinstance(make_sink("plain", quiet=True), NullSink)
    assert isinstance(make_sink("live", quiet=True), NullSink)
    assert isinstance(make_sink("json", quiet=True), JsonSink)
    assert isinstance(make_sink("plain", quiet=False), PlainSink)


# -- plain ----------------------------------------------------------------------------------------


def test_plain_lines_are_the_old_ones():
    out = io.StringIO()
    sink = PlainSink(out)
    sink("bringing the repository up to date")
    step = target_progress(sink, "dev/dev1")
    step("pulling a:2")
    assert not hasattr(step, "layer")  # the engine then prints its own per-layer lines, as before
    assert out.getvalue() == "  bringing the repository up to date\n  dev/dev1: pulling a:2\n"


# -- json -----------------------------------------------------------------------------------------


def test_json_events_carry_target_and_step_and_end_with_done():
    out = io.StringIO()
    sink = JsonSink(out, clock=lambda: 100.0)
    sink("bringing the repository up to date")
    n1 = target_progress(sink, "dev/n1")
    n1("pulling a:2")
    n1.layer("abc", "Downloading", 10, 100)
    n1.layer("abc", "Downloading", 20, 100)  # the same status within a second: left out
    n1.layer("abc", "Download complete", None, None)
    sink("dev/n2/web: restarting web")  # a line the operation prefixed itself
    sink.close()
    sink.close()  # once only
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["target"], e["event"], e["step"]) for e in events] == [
        (None, "step", "bringing the repository up to date"),
        ("dev/n1", "step", "pulling a:2"),
        ("dev/n1", "layer", "abc: Downloading"),
        ("dev/n1", "layer", "abc: Download complete"),
        ("dev/n2/web", "step", "restarting web"),
        ("dev/n1", "done", "done"),
        ("dev/n2/web", "done", "done"),
        (None, "done", "done")]
    assert events[2]["current"] == 10 and events[2]["total"] == 100 and events[3]["total"] is None
    assert all(e["t"] == 100.0 for e in events)


def test_json_failed_events_name_the_failed_targets():
    out = io.StringIO()
    sink = JsonSink(out)
    target_progress(sink, "dev/n1")("pulling a:2")
    target_progress(sink, "dev/n2")("pulling a:2")
    sink.close(error="dev/n2: image a:2 is not on the node")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["target"], e["event"]) for e in events[-3:]] == [("dev/n1", "done"), ("dev/n2", "failed"),
                                                               (None, "failed")]
    assert events[-1]["step"] == "dev/n2: image a:2 is not on the node"


# -- live -----------------------------------------------------------------------------------------


def live_sink(colour: bool = True) -> tuple[LiveSink, io.StringIO]:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, record=True, force_terminal=True, width=100, no_color=not colour)
    return LiveSink(console, colour=colour, refresh=50), out


def screen(sink: LiveSink) -> list[str]:
    """What the live view shows now, as plain text lines."""
    from rich.console import Console

    view = Console(file=io.StringIO(), record=True, width=100, force_terminal=True)
    view.print(sink.progress.get_renderable())
    return [line.rstrip() for line in view.export_text().splitlines() if line.strip()]


def test_live_view_is_one_line_per_node_updated_in_place():
    sink, out = live_sink()
    try:
        sink("bringing the repository up to date")
        n1, n2 = target_progress(sink, "dev/n1"), target_progress(sink, "dev/n2")
        n1("pulling reg:5000/web:2")
        n2("pulling reg:5000/web:2")
        n1.layer("aaa", "Downloading", 512_000, 1_000_000)
        n1.layer("bbb", "Downloading", 0, 1_000_000)
        lines = screen(sink)
        assert len(lines) == 3
        assert lines[0].split()[1:5] == ["deployer", "bringing", "the", "repository"]
        assert "dev/n1" in lines[1] and "pulling reg:5000/web:2 (2 layers)" in lines[1]
        assert "0.5/2.0 MB" in lines[1]  # the bar's figures: both layers' bytes
        assert "dev/n2" in lines[2] and "pulling reg:5000/web:2" in lines[2]
        n2("started web-next, waiting until it is healthy")
        lines = screen(sink)
        assert len(lines) == 3  # updated, not added
        assert "dev/n2" in lines[2] and "waiting until it is healthy" in lines[2] and "pulling" not in lines[2]
    finally:
        sink.close()
    summary = [line for line in sink.console.export_text().splitlines() if line.strip()]
    assert summary[-3].split()[:2] == ["done", "deployer"]
    assert summary[-2].split()[:3] == ["done", "dev/n1", "pulling"]
    assert summary[-1].split()[:3] == ["done", "dev/n2", "started"] and summary[-1].endswith("s)")
    assert "\x1b[" in out.getvalue()  # it was drawn on a terminal


def test_live_summary_marks_the_failed_node():
    sink, _ = live_sink()
    target_progress(sink, "dev/n1")("pulling a:2")
    target_progress(sink, "dev/n2")("pulling a:2")
    sink.close(error="dev/n2: image a:2 is not on the node")
    summary = [line.split()[:2] for line in sink.console.export_text().splitlines() if line.strip()]
    assert summary[-2:] == [["done", "dev/n1"], ["FAILED", "dev/n2"]]


def test_live_without_colour_prints_no_colour_codes():
    sink, out = live_sink(colour=False)
    target_progress(sink, "dev/n1")("pulling a:2")
    sink.close(error="dev/n1: failed")
    assert "FAILED" in out.getvalue() and not ANSI_COLOUR.search(out.getvalue())
    assert "\x1b[1m" not in out.getvalue()  # no bold either: only the cursor moves of drawing in place


# -- NO_COLOR and --no-color ----------------------------------------------------------------------


def test_no_color_env_any_non_empty_value_and_the_option():
    assert colour_allowed({}) is True
    assert colour_allowed({"NO_COLOR": "1"}) is False and colour_allowed({"NO_COLOR": "no"}) is False
    assert colour_allowed({"NO_COLOR": ""}) is True  # no-color.org: present and not empty
    with click.Context(click.Command("x")) as ctx:
        ctx.meta[NO_COLOR_META] = True
        assert colour_allowed({}) is False


# -- the option on the commands, with a stand-in Deployer -----------------------------------------


class StepsDeployer:
    """Reports the steps a deploy to two nodes would, through the progress it was given."""

    def __init__(self, root, progress=None, consul=True):
        self.progress = progress

    def deploy(self, *args, **kwargs):
        self.progress("bringing the repository up to date")
        for node in ("test/n1", "test/n2"):
            step = target_progress(self.progress, node)
            step("pulling a:2")
            if hasattr(step, "layer"):
                step.layer("abc", "Downloading", 5, 10)
            step("started web-next, waiting until it is healthy")
        self.progress("pushing the commit")
        target = NS(target="test/n1/web", previous_image="a:1", error=None, change=None, diff="")
        return NS(action="deploy", target="test", image="a:2", commit="abcdef0123", seconds=1.25, dry_run=False,
                  targets=[target], to_json=lambda: {"image": "a:2"})


@pytest.fixture
def repo(tmp_path, monkeypatch):
    import deployer.ops.deploy

    monkeypatch.setattr(deployer.ops.deploy, "Deployer", StepsDeployer)
    root, _ = make_repo(tmp_path / "infra", "unix:///x.sock", web_compose("a:1"), node="n1")
    return root


def run(repo, *args, env=None):
    return CliRunner().invoke(main, ["--repo", str(repo), *args], env=env or {})


def test_plain_progress_is_the_lines_of_before(repo):
    for args in ([], ["--progress", "plain"], ["--progress", "auto"]):  # not a terminal: auto is plain
        result = run(repo, "deploy", "a:2", "test/n1", *args)
        assert result.exit_code == 0, result.output
        assert result.stderr == ("  bringing the repository up to date\n"
                                 "  test/n1: pulling a:2\n  test/n1: started web-next, waiting until it is healthy\n"
                                 "  test/n2: pulling a:2\n  test/n2: started web-next, waiting until it is healthy\n"
                                 "  pushing the commit\n")
        assert result.stdout == "deploy test: a:1 -> a:2 [abcdef0] (1.2s)\n"


def test_json_progress_from_the_option_and_the_environment(repo):
    for args, env in ((["--progress", "json"], None), ([], {"DEPLOYER_DEPLOY_PROGRESS": "json"})):
        result = run(repo, "deploy", "a:2", "test/n1", "--json", *args, env=env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"image": "a:2"}  # the result stays alone on stdout
        events = [json.loads(line) for line in result.stderr.splitlines()]
        assert [(e["target"], e["event"]) for e in events] == [
            (None, "step"), ("test/n1", "step"), ("test/n1", "layer"), ("test/n1", "step"),
            ("test/n2", "step"), ("test/n2", "layer"), ("test/n2", "step"), (None, "step"),
            ("test/n1", "done"), ("test/n2", "done"), (None, "done")]
        assert events[2]["current"] == 5 and events[2]["total"] == 10


def test_a_bad_progress_mode_is_bad_usage(repo):
    result = run(repo, "deploy", "a:2", "test/n1", "--progress", "fancy")
    assert result.exit_code == 3 and "'fancy' is not one of 'auto', 'plain', 'live', 'json'" in result.stderr
    result = run(repo, "apply", env={"DEPLOYER_APPLY_PROGRESS": "fancy"})
    assert result.exit_code == 3


def test_no_color_on_the_group_and_the_command_and_from_the_environment(repo):
    from deployer.cli import service

    seen = []
    original = service.colour_wanted

    def spy(stream=None, environ=None):
        seen.append(colour_allowed())
        return original(stream, environ)

    for args, env in ((["--no-color", "logs", "zz"], None), (["logs", "zz", "--no-color"], None),
                      (["logs", "zz"], {"NO_COLOR": "1"}), (["logs", "zz"], {"DEPLOYER_NO_COLOR": "1"}),
                      (["logs", "zz"], None)):
        service.colour_wanted = spy
        try:
            result = run(repo, *args, env=env)
        finally:
            service.colour_wanted = original
        assert result.exit_code == 3  # unknown target: after the colour was decided
    assert seen == [False, False, False, False, True]
    result = run(repo, "--no-color", "deploy", "a:2", "test/n1", "--progress", "plain")
    assert result.exit_code == 0 and not ANSI.search(result.output)


# -- pulls and pushes as numbers ------------------------------------------------------------------


class PullingAPI:
    """An engine API that does not have the image and streams docker's pull events for it."""

    EVENTS = [{"status": "Pulling from web", "id": "1"},
              {"status": "Pulling fs layer", "id": "aaa"},
              {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 40, "total": 100},
               "progress": "[==>  ] 40B/100B"},
              {"status": "Pull complete", "id": "aaa", "progressDetail": {}},
              {"status": "Digest: sha256:abc"}]

    def __init__(self):
        self.pulled = False

    def inspect_image(self, ref):
        import docker

        if not self.pulled:
            raise docker.errors.NotFound("no such image")
        return {"Id": "sha256:" + "1" * 64}

    def pull(self, ref, **kwargs):
        self.pulled = True
        return iter(self.EVENTS)


def applier_with(progress):
    from deployer.engine.apply import Applier

    return Applier(NS(api=PullingAPI()), progress=progress)


def test_the_engine_hands_pull_layers_as_numbers_to_a_progress_that_takes_them():
    out = io.StringIO()
    sink = JsonSink(out)
    applier_with(target_progress(sink, "dev/n1")).ensure_image("reg:5000/web:1")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e.get("status"), e.get("current"), e.get("total")) for e in events] == [
        ("step", None, None, None), ("layer", "Pulling fs layer", None, None), ("layer", "Downloading", 40, 100),
        ("layer", "Pull complete", None, None), ("step", None, None, None)]
    assert events[0]["step"] == "pulling reg:5000/web:1" and events[-1]["step"].startswith("pulled reg:5000/web:1")


def test_the_engine_prints_its_layer_lines_to_a_plain_progress_as_before():
    lines = []
    applier_with(lines.append).ensure_image("reg:5000/web:1")
    assert lines[:4] == ["pulling reg:5000/web:1", "aaa: Pulling fs layer", "aaa: Downloading [==>  ] 40B/100B",
                         "aaa: Pull complete"]


def test_push_events_of_an_image_reach_the_views_bar():
    from deployer.cli.build import BuildLines

    sink, _ = live_sink()
    try:
        lines = BuildLines(sink=sink)
        lines("image", {"status": "tagged reg:5000/web:1"})
        lines("push", {"status": "The push refers to repository [reg:5000/web]"})
        lines("push", {"status": "Pushing", "id": "aaa", "progressDetail": {"current": 300_000, "total": 1_000_000}})
        (line,) = screen(sink)
        assert "image" in line and "(1 layers)" in line and "0.3/1.0 MB" in line
    finally:
        sink.close()
    out = io.StringIO()
    json_sink = JsonSink(out)
    lines = BuildLines(quiet=True, sink=json_sink)  # --json with --progress json: the events still come
    lines("push", {"status": "Pushed", "id": "aaa", "progressDetail": {}})
    (event,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (event["target"], event["event"], event["status"]) == ("image", "layer", "Pushed")
