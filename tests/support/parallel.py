"""How the suite runs in parallel: pytest-xdist workers, one test module at a time each.

A pytest plugin, loaded by tests/conftest.py. setup.cfg's pytest config says ``-n auto --dist loadfile``,
so the README's ``python3 -m pytest -q`` runs on several worker processes; this module decides

* how many (``pytest_xdist_auto_num_workers``): ``DEPLOYER_TEST_WORKERS`` if set, else
  ``DEFAULT_WORKERS``, never more than there are modules to run, and none at all (0: one process, as
  without xdist, so ``-s``/``capsys.disabled()`` and ``pdb`` work) when the arguments name a single
  module. ``-n N`` on the command line still wins; ``-p no:xdist`` runs everything in one process.
* what goes to one worker (``GroupedFileScheduling``): a whole module, so module-scoped fixtures (a
  fleet, a Consul agent) start once; and the modules that share an expensive session-scoped plugin
  (``SHARED_SESSION_PLUGINS``: the build engine, its registry and the builder images of
  tests/support/build_fixtures.py) all go to one worker together, so those are made once per run,
  not once per worker.
* in which order: longest first, by each unit's time in the last run on this checkout
  (``.pytest_cache``); a unit without one (a fresh clone) gets a guess by kind (``GUESS``): the shared
  groups first, then tests/engines, then tests/unit.

The rule for a new test (every worker runs beside the others on the same machine, as root)
-------------------------------------------------------------------------------------------
Everything a test starts must be unique to it, never a fixed name a second worker would also use:

* Ports on the host: ephemeral ones, bound to port 0 (``tests.support.consul.free_port``,
  ``tests.support.nginx.free_tcp_port``), never a fixed number. Ports inside a fleet node's network
  namespace (a container's published ``127.0.0.1:18080``, sshd's 2222) are private to that node.
* Network names: take them from a ``Fleet`` / ``BuildEngine`` (random tag; bridge subnets are picked
  under a host-wide lock among the ones not in use) instead of making a bridge or netns of your own.
* Files: ``tmp_path`` / ``tmp_path_factory`` (per worker: ``.../popen-gwN/``), never a fixed /tmp
  path; node names from ``tests.support.repos.unique_node`` (the store of shipped files,
  /run/deployer and /var/lib/deployer, is shared by every node on the machine).
* Session-scoped fixtures run once PER WORKER. One that is expensive and worth sharing belongs in a
  plugin listed in ``SHARED_SESSION_PLUGINS``, which keeps its modules on one worker.
* Teardown by PID (Fleet, BuildEngine, RegistryServer record their owner's PID and start time): a
  worker that dies leaves a record the next fleet of any worker sweeps; never kill by name.
* A test that cannot share the machine with others (it measures wall time, loads every core) is a
  defect to fix; if it really cannot, give its module a group of its own in ``SHARED_SESSION_PLUGINS``'s
  manner and say why in docs/testing.md.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from pathlib import Path

import pytest

#: Workers when nothing says otherwise: the tests mostly wait (health intervals, TTLs, dockerd
#: start-ups), so two cores carry three workers; see docs/testing.md for the measurements.
DEFAULT_WORKERS = 3
WORKERS_ENV = "DEPLOYER_TEST_WORKERS"
#: A module whose ``pytest_plugins`` names one of these runs on the same worker as every other such
#: module (the plugin's session fixtures are made once).
SHARED_SESSION_PLUGINS = {"tests.support.build_fixtures": "build-engine"}
#: Where the controller keeps each work unit's duration for the next run's order.
CACHE_KEY = "deployer/unit-durations"

_PLUGINS_RE = re.compile(r"^pytest_plugins\s*=\s*(.+)$", re.M)


def shared_group(path: Path) -> str | None:
    """The shared group of a test module (from its ``pytest_plugins`` line), or None."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for match in _PLUGINS_RE.finditer(text):
        for plugin, group in SHARED_SESSION_PLUGINS.items():
            if re.search(rf"[\"']{re.escape(plugin)}[\"']", match.group(1)):
                return group
    return None


def _modules_named(config: pytest.Config) -> int:
    """How many test modules the command line asks for (a directory: the test_*.py under it)."""
    found: set[Path] = set()
    for arg in config.args or [str(config.rootpath / p) for p in config.getini("testpaths")]:
        path = Path(arg.split("::", 1)[0])
        if not path.is_absolute():
            path = Path(config.invocation_params.dir) / path
        found.update(path.rglob("test_*.py") if path.is_dir() else [path])
    return len(found)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    wanted = os.environ.get(WORKERS_ENV, "").strip()
    if wanted:
        try:
            workers = int(wanted)
        except ValueError:
            raise pytest.UsageError(f"{WORKERS_ENV}={wanted!r}: not a number of workers") from None
    else:
        workers = DEFAULT_WORKERS
    workers = min(workers, _modules_named(config))
    return workers if workers > 1 else 0


def scope_of(rootpath: Path, nodeid: str, _cache: dict[str, str] = {}) -> str:  # noqa: B006 - a memo
    """The work unit of a test: its module, or ``group:NAME`` for a module of a shared group."""
    module = nodeid.split("::", 1)[0]
    if module not in _cache:
        group = shared_group(rootpath / module)
        _cache[module] = f"group:{group}" if group else module
    return _cache[module]


#: Guesses (seconds) for a unit the last run did not time: a shared group, an engine module, a unit module.
GUESS = {"group": 300.0, "engines": 60.0, "unit": 1.0}


def _order_key(durations: dict[str, float]):
    """Longest first: last run's time of a unit, else a guess by its kind (a partial cache, e.g. from a
    run of tests/unit alone, must not put the unit tier ahead of the engine tier)."""
    def key(scope: str) -> tuple:
        if scope in durations:
            took = durations[scope]
        elif scope.startswith("group:"):
            took = GUESS["group"]
        else:
            took = GUESS["engines"] if scope.startswith("tests/engines/") else GUESS["unit"]
        return (-took, scope)
    return key


def _make_scheduler_class():
    from xdist.scheduler import LoadScopeScheduling

    class GroupedFileScheduling(LoadScopeScheduling):
        """``--dist loadfile``, except that the modules of one shared group are one work unit, and
        the units are handed out longest first."""

        def _split_scope(self, nodeid: str) -> str:
            return scope_of(Path(self.config.rootpath), nodeid)

        def schedule(self) -> None:
            if self.collection is None:
                # The parent fills its work queue in the order of the collection and hands out units
                # from its front; a queue that keeps itself sorted makes that longest first. (The
                # collection itself must stay as the workers sent it: tests go out as its indices.)
                cache = getattr(self.config, "cache", None)  # None under -p no:cacheprovider
                durations = cache.get(CACHE_KEY, {}) if cache is not None else {}
                self.config.option.loadscopereorder = False
                self.workqueue = _SortedQueue(_order_key(durations))
            super().schedule()

    class _SortedQueue(OrderedDict):
        """An OrderedDict kept in ``key`` order however its items are added (the parent also puts a
        dead worker's pending units back with ``update``)."""

        def __init__(self, key):
            super().__init__()
            self._key = key

        def __setitem__(self, scope, nodeids) -> None:
            super().__setitem__(scope, nodeids)
            for s in sorted(self, key=self._key):
                self.move_to_end(s)

    return GroupedFileScheduling


@pytest.hookimpl(optionalhook=True, tryfirst=True)   # before xdist's own (DSession's) implementation
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") == "loadfile":
        return _make_scheduler_class()(config, log)
    return None


# -- the controller notes how long each unit took, for the next run's order -----------------------

_took: dict[str, float] = {}
#: ``DEPLOYER_TEST_TIMELINE=FILE``: the controller writes there one JSON line per unit and worker
#: (first start, last stop, seconds of tests), to see how the run was spread (docs/testing.md).
TIMELINE_ENV = "DEPLOYER_TEST_TIMELINE"
_spans: dict[tuple[str, str], list[float]] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    node = getattr(report, "node", None)
    if node is not None:                                 # a worker's report, seen by the controller
        scope = scope_of(_ROOT[0], report.nodeid) if _ROOT else report.nodeid.split("::", 1)[0]
        _took[scope] = _took.get(scope, 0.0) + report.duration
        span = _spans.setdefault((node.gateway.id, scope), [report.start, report.stop, 0.0])
        span[0], span[1], span[2] = min(span[0], report.start), max(span[1], report.stop), span[2] + report.duration


_ROOT: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    _ROOT[:] = [Path(config.rootpath)]


def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    filtered = config.getoption("keyword") or config.getoption("markexpr") or config.getoption("lf", False) \
        or exitstatus == pytest.ExitCode.INTERRUPTED       # a partial run's times would mislead the next
    if _took and getattr(config, "cache", None) is not None and not hasattr(config, "workerinput") and not filtered:
        durations = dict(config.cache.get(CACHE_KEY, {}))
        durations.update({scope: round(t, 1) for scope, t in _took.items()})
        config.cache.set(CACHE_KEY, durations)
    timeline = os.environ.get(TIMELINE_ENV)
    if timeline and _spans:
        with open(timeline, "w") as f:
            for (worker, scope), (start, stop, took) in sorted(_spans.items(), key=lambda kv: kv[1][0]):
                f.write(json.dumps({"worker": worker, "unit": scope, "start": round(start, 2),
                                    "stop": round(stop, 2), "tests_s": round(took, 1)}) + "\n")


def pytest_unconfigure(config: pytest.Config) -> None:
    """After a parallel run, the controller sweeps what dead workers left: xdist kills a worker that
    does not end within seconds of an interrupt (Ctrl-C, a timeout), before its fixtures' teardown
    has run. Only fleets, build engines and registries whose recorded owner process is gone are
    touched (each one's own sweep, by recorded PID), so a live worker's or a colleague's never are."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None) or os.geteuid() != 0:
        return
    from tests.support.build_engine import BuildEngine
    from tests.support.engines import _host_lock, _host_unlock, sweep_stale_fleets
    from tests.support.registry import RegistryServer

    def fleets():
        lock = _host_lock()          # as Fleet.start sweeps: one sweeper at a time on the machine
        try:
            sweep_stale_fleets()
        finally:
            _host_unlock(lock)

    for sweep in (fleets, BuildEngine.sweep_stale, RegistryServer.sweep_stale):
        try:
            sweep()
        except Exception as e:  # noqa: BLE001 - a sweep that fails must not hide the run's result
            print(f"parallel: {sweep.__qualname__} failed: {e}")
