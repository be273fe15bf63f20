"""Reading the infrastructure's history back: the deploy log, a service's versions, rollback targets.

* ``deploy_log()`` -- one ``git log`` call, one entry per commit that
  has a ``Deployer-Action`` trailer, newest first.
* ``service_versions()`` -- the images one service had, newest first,
  read from each commit that touched its compose file (one persistent
  ``git cat-file --batch`` process, parse results cached per blob).
* ``deploy_entry()`` -- one deployer commit by revision (``rollback --commit``).
* ``resolve_rollback()`` -- which image (and which commit) a rollback
  goes back to.

GitPython (for its persistent ``git cat-file`` readers) and the YAML parser are
loaded on first use: only history walks need them, and the deploy path never
does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterable, Iterator

from deployer.errors import RepoError, RollbackError
from deployer.gitrepo.base import GitRepoBase
from deployer.gitrepo.base import git_plain
from deployer.gitrepo.commit import (
    TRAILER_ACTION, TRAILER_IMAGE, TRAILER_IMAGE_ID, TRAILER_PREVIOUS_IMAGE, TRAILER_ROLLBACK_TO, TRAILER_TARGET,
)


@dataclass
class HistoryEntry:
    """One deployer commit, as ``deploy_log`` reads it back."""

    commit: str  # full sha
    short: str  # abbreviated sha (unique in the repo, like %h)
    time: str  # committer date, strict ISO 8601 with offset (%cI)
    author: str  # author name
    email: str  # author email
    action: str  # Deployer-Action: deploy | rollback
    targets: list[str]  # every Deployer-Target, in order
    image: str | None
    previous_image: str | None
    image_id: str | None
    rollback_to: str | None
    subject: str
    reason: str  # the body without the trailer block ("" when none)
    trailers: list[tuple[str, str]] = field(default_factory=list)  # all trailers, as written


@dataclass
class Version:
    """One image a service had: the commit that introduced it."""

    commit: str  # full sha
    image: str
    time: str  # committer date, ISO 8601 with offset
    subject: str

    @property
    def short(self) -> str:
        return self.commit[:7]


def _default_target(compose_relpath: str, service: str) -> str:
    parts = PurePosixPath(compose_relpath).parts
    if len(parts) >= 4 and parts[0] == "datacenters":
        return f"{parts[1]}/{parts[2]}/{service}"
    return f"{compose_relpath}:{service}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _image_of(doc: Any, service: str) -> str | None:
    if not isinstance(doc, dict):
        return None
    services = doc.get("services")
    if not isinstance(services, dict):
        return None
    svc = services.get(service)
    if not isinstance(svc, dict):
        return None
    image = svc.get("image")
    if not isinstance(image, str) or not image.strip():
        return None
    return image.strip()



class HistoryMixin(GitRepoBase):
    """History reads: the deploy log, service versions, rollback resolution."""

    # -- history ----------------------------------------------------------------

    def deploy_log(self, target_prefix: str | None = None, limit: int | None = None, *,
                   published: bool = False) -> list[HistoryEntry]:
        """Deployer commits reachable from HEAD, newest first.

        ``published``: those reachable from the branch's upstream (the remote-tracking ref that
        pushes and pulls update) instead, when it has one: only commits the remote has, with the
        sha the remote has (a local commit a push's rebase or a pull's rebase will rewrite is left
        out). Without an upstream, HEAD.

        ``target_prefix`` keeps the commits with a Deployer-Target equal to it or
        under it at a path-component boundary ("dev" matches "dev/dev1/worker",
        not "devx/n/web"). ``limit`` caps the number of entries returned.
        """
        if limit is not None and limit <= 0:
            return []
        if not self._has_head():
            return []
        prefix = (target_prefix or "").strip().strip("/")
        entries: list[HistoryEntry] = []
        rev = "HEAD"
        if published:
            try:
                rev = self._run("rev-parse", "--verify", "--quiet", "@{upstream}^{commit}", read_only=True).strip()
            except RepoError:
                rev = "HEAD"
        for entry in self._entries("--fixed-strings", "--regexp-ignore-case", f"--grep={TRAILER_ACTION}", rev):
            if prefix and not any(t == prefix or t.startswith(prefix + "/") for t in entry.targets):
                continue
            entries.append(entry)
            if limit is not None and len(entries) >= limit:
                break
        return entries

    def _entries(self, *args: str) -> Iterator[HistoryEntry]:
        n = len(_LOG_FIELDS)
        out = self._run("log", "--no-show-signature", "--encoding=UTF-8", f"--format={_LOG_FORMAT}", *args, "--",
                        read_only=True, strip=False)
        parts = out.split("\0")
        for i in range(0, len(parts) - n + 1, n):
            sha, short, time, an, ae, subject, body, trailer_text = parts[i : i + n]
            entry = _make_entry(sha.strip(), short, time, an, ae, subject, body, trailer_text)
            if entry is not None:
                yield entry

    def deploy_entry(self, rev: str) -> HistoryEntry:
        """The deployer commit ``rev`` names, in the history of HEAD; RollbackError when it is not one."""
        sha = self.rev_parse(rev.strip()) if rev else None
        if sha is None:
            raise RollbackError(f"unknown revision {rev}")
        if not self._in_head_history(sha):
            raise RollbackError(f"commit {sha[:7]} is not in the history of HEAD")
        found = list(self._entries("-1", sha))
        if not found:
            raise RollbackError(f"commit {sha[:7]} is not a deploy or rollback (it has no {TRAILER_ACTION} trailer)")
        return found[0]

    def _in_head_history(self, sha: str) -> bool:
        head = self.rev_parse("HEAD")
        if head is None:
            return False
        if head == sha:
            return True
        status, _out, _err = git_plain(["merge-base", "--is-ancestor", sha, head], cwd=self.root)
        return status == 0

    def _image_in_blob(self, rev: str, rel: str, service: str) -> str | None:
        """The service's image in the file at ``rev`` (None: no file, bad YAML, no such service)."""
        try:
            sha, typ, _size = self._repo.git.get_object_header(f"{rev}:{rel}")
        except ValueError:  # "<rev>:<path> missing"
            return None
        sha = sha.decode() if isinstance(sha, bytes) else sha
        typ = typ.decode() if isinstance(typ, bytes) else typ
        if typ != "blob":
            return None
        doc = self._parsed.get(sha, _MISSING)
        if doc is _MISSING:
            _s, _t, _n, data = self._repo.git.get_object_data(sha)
            doc = self._load_yaml(data)
            if len(self._parsed) >= 4096:
                self._parsed.clear()
            self._parsed[sha] = doc
        return _image_of(doc, service)

    def _load_yaml(self, data: bytes) -> Any:
        """Parse a compose file; None when it is not valid YAML."""
        if self._yaml is None:
            from ruamel.yaml import YAML

            self._yaml = YAML(typ="safe")  # uses ruamel.yaml.clib's C parser when installed
        try:
            return self._yaml.load(data)
        except Exception:  # YAMLError, duplicate keys, bad encoding, absurd nesting...
            return None

    def _commits_touching(self, rel: str, rev: str) -> list[tuple[str, str, str]]:
        """(sha, committer ISO time, subject) of the commits that changed ``rel``, newest first."""
        sha = self.rev_parse(rev)
        if sha is None:
            if rev == "HEAD" and not self._has_head():
                return []
            raise RepoError(f"unknown revision {rev}")
        out = self._run(
            "log", "--no-show-signature", "--encoding=UTF-8", "--format=%H%x00%cI%x00%s%x00", sha, "--", rel,
            read_only=True, strip=False,
        )
        parts = out.split("\0")
        return [(parts[i].strip(), parts[i + 1], parts[i + 2]) for i in range(0, len(parts) - 2, 3)]

    def _iter_versions(
        self, rel: str, service: str, commits: Iterable[tuple[str, str, str]]
    ) -> Iterator[Version]:
        """Collapse the commits touching the file into versions of ``service``, lazily."""
        run: Version | None = None
        for sha, time, subject in commits:
            image = self._image_in_blob(sha, rel, service)
            if image is None:
                break  # file gone/unparseable or service absent: it did not exist before
            if run is not None and run.image == image:
                run = Version(sha, image, time, subject)  # an older commit with the same image
                continue
            if run is not None:
                yield run
            run = Version(sha, image, time, subject)
        if run is not None:
            yield run

    def service_versions(
        self, compose_relpath: str, service: str, rev: str = "HEAD", limit: int | None = None
    ) -> list[Version]:
        """The images ``service`` had in ``compose_relpath`` up to ``rev``, newest first.

        One entry per image change: consecutive commits with the same image
        collapse to the (oldest) commit that introduced it. The walk stops at the
        first commit where the file is missing or does not parse or the service is
        absent. An unborn HEAD gives []. ``limit`` stops the walk after that many
        versions (each commit read costs a YAML parse, ~2 ms in pure Python).
        """
        rel = self._rel(compose_relpath)
        out: list[Version] = []
        if limit is not None and limit <= 0:
            return out
        for v in self._iter_versions(rel, service, self._commits_touching(rel, rev)):
            out.append(v)
            if limit is not None and len(out) >= limit:
                break
        return out

    def image_at(self, rev: str, compose_relpath: str, service: str) -> str | None:
        """The service's image in the compose file at ``rev``; None when the file or
        service is not there or the file does not parse. RepoError for an unknown rev."""
        sha = self.rev_parse(rev)
        if sha is None:
            raise RepoError(f"unknown revision {rev}")
        return self._image_in_blob(sha, self._rel(compose_relpath), service)

    def resolve_rollback(
        self,
        compose_relpath: str,
        service: str,
        current_image: str,
        steps: int = 1,
        to_rev: str | None = None,
        target: str | None = None,
    ) -> tuple[str, str]:
        """The (image, commit) a rollback of ``service`` goes back to.

        * ``to_rev`` given (``steps`` is then ignored): it must name a commit that
          changed this service's image, in the history of HEAD, and that image
          must differ from ``current_image``.
        * otherwise: the ``steps``-th distinct image back, counting only images
          different from ``current_image`` and each image once (history
          A, B, A, C with current C: 1 -> A, 2 -> B, 3 -> error). The commit
          returned is the most recent one that introduced that image.

        ``target`` names the service in messages ("dev/dev1/worker"; derived
        from the path when not given).
        """
        rel = self._rel(compose_relpath)
        target = target or _default_target(rel, service)
        if to_rev is not None:
            sha = self.rev_parse(to_rev.strip())
            if sha is None:
                raise RollbackError(f"unknown revision {to_rev}")
            commits = self._commits_touching(rel, "HEAD")
            position = {c[0]: i for i, c in enumerate(commits)}
            wanted = position.get(sha)  # None: not in HEAD's history, or did not touch the file
            versions: list[Version] = []
            for v in self._iter_versions(rel, service, commits):
                if v.commit == sha:
                    if v.image == current_image:
                        raise RollbackError(
                            f"commit {v.short} set {target} to {v.image}, which is its current image; "
                            "nothing to roll back"
                        )
                    return v.image, v.commit
                versions.append(v)
                # Past the commit (or it is not a candidate at all): only the listing is left.
                if (wanted is None or position[v.commit] > wanted) and len(versions) > 8:
                    break
            listed = ", ".join(f"{v.short} {v.image}" for v in versions[:8])
            if len(versions) > 8:
                listed += ", ..."
            raise RollbackError(
                f"commit {sha[:7]} did not change {target} (its versions: {listed or 'none'})"
            )
        if steps < 1:
            raise RollbackError(f"cannot go back {steps} versions: steps must be 1 or more")
        seen: set[str] = {current_image}
        found = 0
        for v in self._iter_versions(rel, service, self._commits_touching(rel, "HEAD")):
            if v.image in seen:
                continue
            seen.add(v.image)
            found += 1
            if found == steps:
                return v.image, v.commit
        if found == 0:
            raise RollbackError(f"{target} has no earlier version; cannot go back {steps}")
        raise RollbackError(
            f"{target} has only {_plural(found, 'earlier version')}; cannot go back {steps}"
        )


_MISSING: Any = object()
_LOG_FIELDS = ["%H", "%h", "%cI", "%an", "%ae", "%s", "%b", "%(trailers:only,unfold)"]
_LOG_FORMAT = "%x00".join(_LOG_FIELDS) + "%x00"


def _make_entry(
    sha: str, short: str, time: str, an: str, ae: str, subject: str, body: str, trailer_text: str
) -> HistoryEntry | None:
    trailers: list[tuple[str, str]] = []
    for line in trailer_text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        trailers.append((key.strip(), value.strip()))

    def first(name: str) -> str | None:
        for k, v in trailers:
            if k.lower() == name.lower():
                return v or None
        return None

    action = first(TRAILER_ACTION)
    if not action:
        return None
    targets = [v for k, v in trailers if k.lower() == TRAILER_TARGET.lower() and v]
    reason = _strip_trailer_block(body) if trailers else body.strip()
    return HistoryEntry(
        commit=sha,
        short=short.strip(),
        time=time.strip(),
        author=an,
        email=ae,
        action=action,
        targets=targets,
        image=first(TRAILER_IMAGE),
        previous_image=first(TRAILER_PREVIOUS_IMAGE),
        image_id=first(TRAILER_IMAGE_ID),
        rollback_to=first(TRAILER_ROLLBACK_TO),
        subject=subject,
        reason=reason,
        trailers=trailers,
    )


def _strip_trailer_block(body: str) -> str:
    """The body without its last paragraph (git found the trailer block there)."""
    paragraphs = re.split(r"\n[ \t]*\n", body.strip("\n"))
    return "\n\n".join(p for p in paragraphs[:-1]).strip("\n").rstrip()


