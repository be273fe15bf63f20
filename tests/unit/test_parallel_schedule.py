"""How tests/support/parallel.py spreads the suite over xdist workers: whole modules, the modules of a
shared session plugin together, longest first; and how many workers a command line gets."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support import parallel

BUILD = 'pytest_plugins = ["tests.support.build_fixtures"]\n'


class FakeCache:
    def __init__(self, data=None):
        self.data = dict(data or {})

    def get(self, key, default):
        return self.data.get(key, default)


class FakeNode:
    """A worker as the scheduler sees it: what it was sent, by index into its own collection."""

    def __init__(self, name):
        self.name, self.sent, self.shutting_down = name, [], False
        self.gateway = SimpleNamespace(id=name)

    def send_runtest_some(self, indices):
        self.sent.extend(indices)

    def shutdown(self):
        self.shutting_down = True


def make_config(root: Path, workers: int, durations=None):
    option = SimpleNamespace(tx=[f"{workers}*popen"], loadscopereorder=True, dist="loadfile")
    return SimpleNamespace(option=option, rootpath=root, cache=FakeCache(
        {parallel.CACHE_KEY: durations} if durations else None),
        getvalue=lambda name: getattr(option, name))


def tree(root: Path, files: dict[str, str]) -> list[str]:
    """Write the test files; return a collection: two tests per module, in path order."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return [f"{rel}::test_{i}" for rel in sorted(files) for i in (1, 2)]


def run_schedule(root: Path, collection: list[str], workers: int, durations=None):
    sched = parallel._make_scheduler_class()(make_config(root, workers, durations))
    nodes = [FakeNode(f"gw{i}") for i in range(workers)]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, list(collection))
    sched.schedule()
    return sched, {n.name: [sched.registered_collections[n][i] for i in n.sent] for n in nodes}


def modules(nodeids):
    return list(dict.fromkeys(n.split("::")[0] for n in nodeids))


def test_shared_group_comes_from_the_pytest_plugins_line(tmp_path):
    files = {"a.py": BUILD, "b.py": "pytest_plugins = ('tests.support.build_fixtures', 'x')\n",
             "c.py": "# uses tests.support.build_fixtures in a comment only\nimport os\n",
             "d.py": 'pytest_plugins = ["tests.support.build_fixtures_other"]\n'}
    tree(tmp_path, files)
    assert [parallel.shared_group(tmp_path / f) for f in sorted(files)] == ["build-engine", "build-engine", None, None]
    assert parallel.scope_of(tmp_path, "a.py::test_x[1]") == parallel.scope_of(tmp_path, "b.py::C::test_y")
    assert parallel.scope_of(tmp_path, "c.py::test_1") == "c.py"


def test_every_module_goes_whole_to_one_worker_and_a_shared_group_to_one_worker(tmp_path):
    collection = tree(tmp_path, {
        "tests/engines/test_a.py": "", "tests/engines/test_build.py": BUILD, "tests/engines/test_c.py": "",
        "tests/engines/test_release.py": BUILD, "tests/unit/test_u.py": "", "tests/unit/test_v.py": ""})
    sched, got = run_schedule(tmp_path, collection, 3)
    # drain: each worker reports its tests done, in the order it got them, until nothing is left
    for _ in range(10):
        for node in list(sched.assigned_work):
            for i in list(node.sent):
                nodeid = sched.registered_collections[node][i]
                if not sched.assigned_work[node][sched._split_scope(nodeid)][nodeid]:
                    sched.mark_test_complete(node, i)
        got = {n.name: [sched.registered_collections[n][i] for i in n.sent] for n in sched.assigned_work}
    ran = sorted(n for ids in got.values() for n in ids)
    assert ran == sorted(collection)                               # each test exactly once
    owner = {}
    for worker, ids in got.items():
        for nodeid in ids:
            owner.setdefault(nodeid.split("::")[0], set()).add(worker)
    assert all(len(w) == 1 for w in owner.values()), owner         # a module never spans workers
    assert owner["tests/engines/test_build.py"] == owner["tests/engines/test_release.py"]


def test_units_go_out_longest_first_guessing_by_kind_without_a_last_run(tmp_path):
    collection = tree(tmp_path, {
        "tests/engines/test_a.py": "", "tests/engines/test_b.py": "", "tests/engines/test_build.py": BUILD,
        "tests/unit/test_u.py": ""})
    # one worker: the order it is sent things in is the queue's order
    _, got = run_schedule(tmp_path, collection, 1)
    assert modules(got["gw0"]) == ["tests/engines/test_build.py", "tests/engines/test_a.py"]  # two units at first
    # a last run's times win over the guesses; units it did not time are guessed (a unit module: small)
    _, got = run_schedule(tmp_path, collection, 1, durations={
        "tests/unit/test_u.py": 2.0, "tests/engines/test_b.py": 900.0})
    assert modules(got["gw0"]) == ["tests/engines/test_b.py", "tests/engines/test_build.py"]


def test_the_indices_sent_name_the_tests_of_the_unit_in_the_workers_collection(tmp_path):
    # The tests go out as indices into the collection the worker sent: ordering the units must not
    # reorder that list (a first version did, and workers ran other modules' tests than they were given).
    collection = tree(tmp_path, {"tests/engines/test_a.py": "", "tests/unit/test_u.py": ""})
    sched, got = run_schedule(tmp_path, collection, 2, durations={"tests/unit/test_u.py": 100.0})
    assert modules(got["gw0"]) == ["tests/unit/test_u.py"]        # the longer one first, ...
    assert all(sched.registered_collections[n] == collection for n in sched.assigned_work)
    assert sorted(n for ids in got.values() for n in ids) == sorted(collection)
    assert {tuple(modules(ids)) for ids in got.values()} == {("tests/engines/test_a.py",), ("tests/unit/test_u.py",)}


def test_a_dead_workers_units_go_back_into_the_queue_in_order(tmp_path):
    collection = tree(tmp_path, {f"tests/engines/test_{c}.py": "" for c in "abcdef"})
    durations = {f"tests/engines/test_{c}.py": t for c, t in zip("abcdef", (10.0, 60.0, 50.0, 40.0, 30.0, 20.0))}
    sched, got = run_schedule(tmp_path, collection, 2, durations=durations)
    assert [modules(got[w]) for w in ("gw0", "gw1")] == [["tests/engines/test_b.py", "tests/engines/test_d.py"],
                                                         ["tests/engines/test_c.py", "tests/engines/test_e.py"]]
    assert list(sched.workqueue) == ["tests/engines/test_f.py", "tests/engines/test_a.py"]
    gw0 = next(n for n in sched.assigned_work if n.name == "gw0")
    sched.remove_node(gw0)                       # it died: its units (b, d) are queued again
    assert list(sched.workqueue) == ["tests/engines/test_b.py", "tests/engines/test_d.py",
                                     "tests/engines/test_f.py", "tests/engines/test_a.py"]


def config_for(tmp_path, args, monkeypatch, env=None):
    (tmp_path / "tests/unit").mkdir(parents=True)
    (tmp_path / "tests/engines").mkdir(parents=True)
    for name in ("tests/unit/test_u1.py", "tests/unit/test_u2.py", "tests/engines/test_e.py"):
        (tmp_path / name).write_text("")
    monkeypatch.delenv(parallel.WORKERS_ENV, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    return SimpleNamespace(args=args, rootpath=tmp_path, getini=lambda name: ["tests"],
                           invocation_params=SimpleNamespace(dir=tmp_path))


@pytest.mark.parametrize(("args", "env", "workers"), [
    ([], {}, 3),                                               # the whole suite: DEFAULT_WORKERS
    (["tests/unit"], {}, 2),                                   # never more workers than modules
    (["tests/unit/test_u1.py"], {}, 0),                        # one module: no workers, one process
    (["tests/unit/test_u1.py::test_x", "tests/unit/test_u1.py::test_y"], {}, 0),
    (["tests"], {"DEPLOYER_TEST_WORKERS": "2"}, 2),
    (["tests"], {"DEPLOYER_TEST_WORKERS": "1"}, 0),
])
def test_how_many_workers(tmp_path, monkeypatch, args, env, workers):
    assert parallel.DEFAULT_WORKERS == 3
    assert parallel.pytest_xdist_auto_num_workers(config_for(tmp_path, args, monkeypatch, env)) == workers


def test_a_worker_count_that_is_not_a_number_is_refused(tmp_path, monkeypatch):
    config = config_for(tmp_path, [], monkeypatch, {"DEPLOYER_TEST_WORKERS": "many"})
    with pytest.raises(pytest.UsageError, match="DEPLOYER_TEST_WORKERS='many': not a number of workers"):
        parallel.pytest_xdist_auto_num_workers(config)
