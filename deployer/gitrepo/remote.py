"""Team use through a git remote: pull before, push after, with rebase-retry.

A team shares the infrastructure repository through a remote (the current
branch's upstream, or ``origin``). The deploy lock (``lock.py``) only orders
deployers working in the *same clone*; two operators on two machines each hold
their own. What they agree on is the remote branch, and ``git push`` is the
only step where that agreement is checked atomically: the remote accepts a push
only when it is a fast-forward of what it has. So every command that changes
the repository runs, under its lock::

    sync()  ->  load -> edit -> apply -> commit  ->  push_with_retry()

* ``sync()`` (``git pull --rebase``: fetch, then rebase local commits onto the
  remote, ``--autostash`` for uncommitted edits) makes the command start from
  the latest agreed state, so it sees services other operators deployed.
* Two machines deploying at once both start from the same commit. The first
  push wins; the second is rejected as non-fast-forward. ``push_with_retry``
  then fetches and rebases its commit on top and pushes again: when the two
  deploys touched different services (different lines or files), both end up
  in the history, one after the other, linear.
* When both changed the *same* service (the same ``image:`` line), the rebase
  conflicts. Git cannot know which image should win, and neither can the
  deployer: the two containers were swapped on the node in some order the
  repository never saw. So the later deploy stops with RepoError and the
  operator must redeploy deliberately, after looking at what the other one did.

Why ``push_with_retry`` resets the branch after such a conflict: the rebase is
aborted, the local commit is saved on ``refs/deployer/unpushed/<UTC time>``
(also in the reflog), and the branch is moved to the remote's commit with
``git reset --keep`` (which refuses rather than overwrite uncommitted edits;
then the branch keeps the commit and the message says so). Leaving the
unpushed commit on the branch would make every later ``sync()`` on this clone
stop at the same conflict, blocking all deploys from it, and would leave the
work tree claiming an image the team's history contradicts. After the reset
the clone agrees with the remote; ``deployer status`` shows the node's drift
(the container that was actually started), and nothing is lost: ``git show
<ref>`` has the deploy, and a redeploy commits it on top of the other change.
"""

from __future__ import annotations

import random
import time as _time
from pathlib import Path
from typing import Mapping

from deployer.errors import RepoError
from deployer.gitrepo.base import GitRepoBase, git_plain, one_line

NETWORK_TIMEOUT = 300  # seconds for one git fetch/push: a hung remote must not hold the deploy lock forever
UNPUSHED_REF_PREFIX = "refs/deployer/unpushed/"


_UNKNOWN = object()  # the remote spec not looked up yet


class RemoteMixin(GitRepoBase):
    """Sync with the team's remote: pull --rebase, push with rebase-retry, unpushed refs."""

    _remote_spec_memo: object = _UNKNOWN  # this opened repository's _remote_spec, once looked up

    # -- team use: a shared git remote -----------------------------------------

    def _git_status(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> tuple[int, str, str]:
        """Run ``git <args>`` in the root; (exit status, stdout, stderr), never raising for a failure."""
        return git_plain(list(args), cwd=self.root, env=env, timeout=timeout)

    def current_branch(self) -> str | None:
        """The checked-out branch's short name; None when HEAD is detached."""
        status, out, _ = self._git_status("symbolic-ref", "--quiet", "--short", "HEAD")
        return (out.strip() or None) if status == 0 else None

    def _branch_config(self, branch: str) -> dict[str, str]:
        """``remote`` and ``merge`` of ``branch.<branch>`` as ``git config --get`` gives them (the last value of
        each), read in one process."""
        status, out, _ = self._git_status("config", "-z", "--get-regexp", r"^branch\.")
        found: dict[str, str] = {}
        if status != 0:
            return found
        for entry in out.split("\0"):
            key, _, value = entry.partition("\n")
            for name in ("remote", "merge"):
                if key == f"branch.{branch}.{name}":
                    found[name] = value.strip()
        return found

    def _remote_spec(self) -> tuple[str, str, str | None] | None:
        """(remote, remote branch ref, local branch) that deploys sync with and push to, or None.

        The current branch's upstream (``branch.<name>.remote`` + ``.merge``) when one is
        configured, otherwise the remote named ``origin`` and the branch of the same name.
        ``local branch`` is None when HEAD is detached. Looked up once per opened repository:
        a transaction asks before the pull, in the pull and in the push, and neither the branch
        nor the remote configuration changes while it holds the lock.
        """
        if self._remote_spec_memo is _UNKNOWN:
            self._remote_spec_memo = self._look_up_remote_spec()
        return self._remote_spec_memo

    def _look_up_remote_spec(self) -> tuple[str, str, str | None] | None:
        branch = self.current_branch()
        if branch:
            config = self._branch_config(branch)
            remote, merge = config.get("remote"), config.get("merge")
            if remote and remote != "." and merge:
                if not merge.startswith("refs/"):
                    merge = f"refs/heads/{merge}"
                return remote, merge, branch
        status, out, _ = self._git_status("remote")
        if status == 0 and "origin" in out.split():
            return "origin", f"refs/heads/{branch}" if branch else "", branch
        return None

    def has_remote(self) -> bool:
        """True when the current branch has an upstream, or a remote named ``origin`` exists."""
        return self._remote_spec() is not None

    def _team_spec(self, what: str) -> tuple[str, str, str]:
        spec = self._remote_spec()
        assert spec is not None
        remote, merge, branch = spec
        if branch is None:
            raise RepoError(
                f"cannot {what}: HEAD is detached in {self.root}; check out the branch the team "
                f"shares with {remote} (git switch main)"
            )
        return remote, merge, branch

    def _git_path(self, name: str) -> Path:
        out = self._run("rev-parse", "--git-path", name, read_only=True).strip()
        p = Path(out)
        return p if p.is_absolute() else self.root / p

    def _refuse_operation_in_progress(self, what: str) -> None:
        for name, op in (("rebase-merge", "a rebase"), ("rebase-apply", "a rebase or git am"),
                         ("MERGE_HEAD", "a merge"), ("CHERRY_PICK_HEAD", "a cherry-pick"),
                         ("REVERT_HEAD", "a revert")):
            if self._git_path(name).exists():
                raise RepoError(
                    f"cannot {what}: {op} is in progress in {self.root}; finish or abort it first "
                    "(git status shows how)"
                )
        unmerged = self._unmerged_paths()
        if unmerged:
            raise RepoError(f"cannot {what}: {', '.join(unmerged)} {'has' if len(unmerged) == 1 else 'have'} "
                            f"unresolved conflicts in {self.root}")

    def _unmerged_paths(self) -> list[str]:
        status, out, _ = self._git_status("diff", "--name-only", "--diff-filter=U", "-z")
        return sorted({p for p in out.split("\0") if p}) if status == 0 else []

    def _has_tracked_changes(self) -> bool:
        status, out, _ = self._git_status("status", "--porcelain=v1", "-z", "--untracked-files=no")
        return status == 0 and bool(out.strip("\0").strip())

    def _fetch(self, remote: str, merge_ref: str) -> str | None:
        """Fetch the remote branch; its commit sha, or None when the remote has no such branch yet."""
        status, _out, err = self._git_status(
            "fetch", "--quiet", "--no-tags", "--no-recurse-submodules", remote, merge_ref,
            timeout=NETWORK_TIMEOUT,
        )
        if status != 0:
            text = one_line(err)
            if "couldn't find remote ref" in text or "could not find remote ref" in text:
                return None
            raise RepoError(f"git fetch from {remote} failed in {self.root}: {text or f'exit status {status}'}")
        sha = self.rev_parse("FETCH_HEAD")
        if sha is None:  # pragma: no cover - fetch succeeded, FETCH_HEAD names a commit
            raise RepoError(f"git fetch from {remote} did not give a commit for {merge_ref}")
        return sha

    def _is_ancestor(self, ancestor: str, descendant: str) -> bool:
        status, _, _ = self._git_status("merge-base", "--is-ancestor", ancestor, descendant)
        return status == 0

    def _rebase_onto(self, upstream: str, label: str) -> list[str]:
        """Rebase the current branch onto ``upstream``; [] when done.

        On a conflict the rebase is aborted (the branch, index and work tree are as
        before) and the conflicted paths are returned. Uncommitted changes to
        tracked files are carried over with ``--autostash``.
        """
        _args, env = self._identity_env(None)  # rebasing writes commits: a committer is needed
        stash = "--autostash" if self._has_tracked_changes() else "--no-autostash"
        status, out, err = self._git_status(
            "-c", "rebase.autoSquash=false", "-c", "rebase.updateRefs=false",
            "rebase", "--quiet", stash, upstream,
            env=env,
        )
        in_progress = self._git_path("rebase-merge").exists() or self._git_path("rebase-apply").exists()
        if status == 0 and not in_progress:
            unmerged = self._unmerged_paths()
            if unmerged:  # the autostash did not apply cleanly on top of the new commits
                raise RepoError(
                    f"brought {self.root} up to date with {label}, but your uncommitted changes conflict "
                    f"with it in {', '.join(unmerged)}; they are kept in 'git stash list'. "
                    "Resolve the conflict (or 'git checkout HEAD -- FILE') and retry"
                )
            return []
        conflicts = self._unmerged_paths() if in_progress else []
        if in_progress:
            ab_status, _o, ab_err = self._git_status("rebase", "--abort", env=env)
            if ab_status != 0:  # pragma: no cover - abort of a rebase we started
                raise RepoError(
                    f"git rebase onto {label} stopped and 'git rebase --abort' failed in {self.root}: "
                    f"{one_line(ab_err)}; run 'git status' and repair by hand"
                )
        if conflicts:
            return conflicts
        text = one_line(err) or one_line(out) or f"exit status {status}"
        raise RepoError(f"git rebase onto {label} failed in {self.root}: {text}; nothing was changed")

    def sync(self) -> bool:
        """Bring the branch up to date with the remote before changing anything.

        ``git pull --rebase`` in two steps: fetch the remote branch, then (only when
        it has commits this branch lacks) rebase local commits onto it. Uncommitted
        changes to tracked files ride along (``--autostash``). Returns True when new
        commits came in. When the remote changed the same lines as unpushed local
        commits, the rebase is aborted, nothing changes, and RepoError says which
        files conflict. No remote: nothing happens (False).
        """
        if not self.has_remote():
            return False
        self._refuse_operation_in_progress("bring the repository up to date")
        remote, merge_ref, branch = self._team_spec("bring the repository up to date")
        label = f"{remote} {_short_ref(merge_ref)}"
        upstream = self._fetch(remote, merge_ref)
        if upstream is None:
            return False  # the remote has no such branch yet: the first push creates it
        if not self._has_head():
            _args, env = self._identity_env(None)
            self._run("merge", "--ff-only", "--quiet", upstream, env=env)
            return True
        head = self._run("rev-parse", "HEAD", read_only=True).strip()
        if self._is_ancestor(upstream, head):
            return False  # up to date (perhaps ahead)
        conflicts = self._rebase_onto(upstream, label)
        if conflicts:
            raise RepoError(
                f"cannot bring {self.root} up to date: your unpushed commits on {branch} and {label} changed "
                f"the same lines of {', '.join(conflicts)}; nothing was changed. Compare them "
                f"('git log --oneline {head[:12]} {upstream[:12]} -- {conflicts[0]}'), then resolve with "
                "'git pull --rebase' or drop your local commit"
            )
        return True

    def push_with_retry(self, max_attempts: int = 5) -> str | None:
        """Push the current branch to the remote; the sha pushed, or None when there is no remote.

        A non-fast-forward rejection (someone pushed first) means: fetch, rebase
        the local commits on top, push again -- up to ``max_attempts`` pushes.
        Rebasing rewrites local commits, so the sha returned may differ from the
        commit that was made. A rebase conflict stops with RepoError; the branch is
        then reset to the remote's commit (the local commits stay on
        ``refs/deployer/unpushed/<time>``), see the module docstring for why.
        Any other push failure (network, permissions, a hook) raises RepoError and
        leaves the local commit in place: the next push sends it.
        """

        if not self.has_remote():
            return None
        if max_attempts < 1:
            raise ValueError("max_attempts must be 1 or more")
        self._refuse_operation_in_progress("push")
        remote, merge_ref, branch = self._team_spec("push")
        if not self._has_head():
            raise RepoError(f"nothing to push: {branch} has no commits yet in {self.root}")
        label = f"{remote} {_short_ref(merge_ref)}"
        for attempt in range(1, max_attempts + 1):
            head = self._run("rev-parse", "HEAD", read_only=True).strip()
            status, out, err = self._git_status(
                "push", "--porcelain", "--quiet", remote, f"HEAD:{merge_ref}", timeout=NETWORK_TIMEOUT,
            )
            rejected = _push_rejection(out)
            if status == 0 and rejected is None:
                return head
            busy = _is_ref_busy(rejected or "", err)
            if not busy and (rejected is None or not _is_non_fast_forward(rejected)):
                text = rejected or one_line(err) or one_line(out) or f"exit status {status}"
                raise RepoError(
                    f"git push to {label} failed: {text}; your commit {head[:12]} is kept locally "
                    "and goes out with the next push"
                )
            if attempt == max_attempts:
                break
            if busy:  # another push was updating the branch at that very moment: let it finish
                _time.sleep(random.uniform(0.05, 0.2) * attempt)
            upstream = self._fetch(remote, merge_ref)
            if upstream is None or self._is_ancestor(upstream, head):
                continue  # nothing new to rebase onto (deleted, or the other push had not landed)
            conflicts = self._rebase_onto(upstream, label)
            if conflicts:
                self._keep_and_reset(head, upstream, conflicts, branch, label)
        head = self._run("rev-parse", "HEAD", read_only=True).strip()
        raise RepoError(
            f"git push to {label} was still rejected after {max_attempts} attempts (others keep pushing); "
            f"your commit {head[:12]} is kept locally and goes out with the next push"
        )

    def _keep_and_reset(self, local: str, upstream: str, conflicts: list[str], branch: str, label: str) -> None:
        """After a push-time rebase conflict: save ``local`` on a backup ref, move the
        branch to the remote's commit (keeping other uncommitted edits), raise."""
        ref = self._backup_ref(local)
        status, _out, err = self._git_status("reset", "--quiet", "--keep", upstream)
        if status == 0:
            after = (f"{branch} now matches {label} ({upstream[:12]}); check 'deployer status' and "
                     "redeploy deliberately if your change must win")
        else:
            after = (f"{branch} still holds it because uncommitted edits kept it from being reset "
                     f"({one_line(err)}); 'git reset --keep {upstream[:12]}' once they are dealt with")
        raise RepoError(
            f"push rejected and rebase hit a conflict in {', '.join(conflicts)}: another operator changed it; "
            f"your deploy commit {local[:12]} is kept locally at {ref}; {after}"
        )

    def _backup_ref(self, sha: str) -> str:
        """Create ``refs/deployer/unpushed/<UTC time>`` (unique) pointing at ``sha``."""

        stamp = _time.strftime("%Y%m%dT%H%M%SZ", _time.gmtime())
        for n in range(1, 1000):
            ref = f"{UNPUSHED_REF_PREFIX}{stamp}" + ("" if n == 1 else f"-{n}")
            # An empty old value: create only, never overwrite an earlier backup.
            status, _o, _e = self._git_status(
                "update-ref", "-m", "deployer: push rejected, commit kept", ref, sha, ""
            )
            if status == 0:
                return ref
        raise RepoError(f"cannot create a backup ref for {sha[:12]} under {UNPUSHED_REF_PREFIX}")  # pragma: no cover


    def unpushed_refs(self) -> list[tuple[str, str]]:
        """(ref, sha) of the commits kept by failed pushes, oldest first."""
        out = self._run("for-each-ref", "--format=%(refname)%00%(objectname)", UNPUSHED_REF_PREFIX.rstrip("/"),
                        read_only=True)
        pairs = [tuple(line.split("\0", 1)) for line in out.splitlines() if "\0" in line]
        return sorted((r, s) for r, s in pairs)  # type: ignore[misc]





def _short_ref(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def _push_rejection(porcelain: str) -> str | None:
    """The summary of the rejected ref in ``git push --porcelain`` output, or None."""
    for line in porcelain.splitlines():
        if line.startswith("!"):
            parts = line.split("\t")
            return " ".join(parts[2:]).strip() or "rejected"
    return None


def _is_non_fast_forward(summary: str) -> bool:
    return any(word in summary for word in ("non-fast-forward", "fetch first", "stale info"))


def _is_ref_busy(summary: str, stderr: str) -> bool:
    """The remote could not lock the branch because another push was updating it."""
    text = f"{summary} {stderr}"
    return any(word in text for word in ("failed to update ref", "failed to lock", "cannot lock ref"))

