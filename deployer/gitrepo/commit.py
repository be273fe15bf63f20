"""Deploy commits: the message format, its trailers, and committing exactly the files a command wrote.

Every deploy edits one compose file's ``image:`` and commits it with a
structured message, so ``git log`` *is* the infrastructure's history::

    deploy dev/dev1/worker: registry/worker:1 -> registry/worker:2

    Operator's reason, as typed (optional).

    Deployer-Action: deploy
    Deployer-Target: dev/dev1/worker
    Deployer-Image: registry/worker:2
    Deployer-Previous-Image: registry/worker:1

The last paragraph is a git trailer block (``git interpret-trailers --parse``
reads it back, ``%(trailers)`` in ``git log --format`` too). The trailer keys
and the message format live here, together, and nowhere else:
``deploy_message`` builds the subject and trailers of every deployer commit.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from typing import Any, Iterable, Mapping, Sequence

from deployer.errors import DirtyFileError, RepoError
from deployer.files import atomic_write
from deployer.gitrepo.base import GitRepoBase, one_line

# Trailer keys written into deploy commits.
TRAILER_ACTION = "Deployer-Action"  # deploy | rollback | scale | node-add | node-remove
TRAILER_TARGET = "Deployer-Target"  # dc/node/service; repeated for multi-node deploys
TRAILER_IMAGE = "Deployer-Image"
TRAILER_PREVIOUS_IMAGE = "Deployer-Previous-Image"
TRAILER_IMAGE_ID = "Deployer-Image-Id"
TRAILER_ROLLBACK_TO = "Deployer-Rollback-To"  # full commit sha
TRAILER_FAILED = "Deployer-Failed"  # a target of the deploy whose switch failed (it runs its old container)
TRAILER_ROLLED_BACK = "Deployer-Rolled-Back"  # switched, then back to its old image (--on-failure rollback)

# The Deployer-Action of each kind of commit.
ACTION_DEPLOY = "deploy"
ACTION_ROLLBACK = "rollback"
ACTION_NODE_ADD = "node-add"
ACTION_NODE_REMOVE = "node-remove"
ACTION_SCALE = "scale"

DEPLOYER_TRAILERS = (
    TRAILER_ACTION,
    TRAILER_TARGET,
    TRAILER_IMAGE,
    TRAILER_PREVIOUS_IMAGE,
    TRAILER_IMAGE_ID,
    TRAILER_ROLLBACK_TO,
    TRAILER_FAILED,
    TRAILER_ROLLED_BACK,
)

# Identity used for commits when neither the environment nor git config names one.
FALLBACK_NAME = "deployer"
FALLBACK_EMAIL_USER = "deployer"

_TRAILER_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_AUTHOR_RE = re.compile(r"^\s*([^<>]*?)\s*<([^<>]*)>\s*$")
# git's trailer parser treats a line starting with "---" + whitespace as the
# start of a patch and stops looking for trailers there (trailer.c).
_DIVIDER_RE = re.compile(r"^---(\s|$)")


def _normalize_trailers(
    trailers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None,
) -> list[tuple[str, str]]:
    """``{key: value}`` or ``[(key, value), ...]`` -> validated pairs.

    A dict value may be a list/tuple (the key is repeated). ``None`` and empty
    values are left out. Keys must be ``[A-Za-z0-9-]``; values must be one line.
    """
    if not trailers:
        return []
    items = trailers.items() if isinstance(trailers, Mapping) else trailers
    out: list[tuple[str, str]] = []
    for key, value in items:
        values = value if isinstance(value, (list, tuple)) else [value]
        key = str(key).strip()
        if not _TRAILER_KEY_RE.match(key):
            raise ValueError(f"invalid trailer key {key!r}: use letters, digits and '-'")
        for v in values:
            if v is None:
                continue
            v = str(v).strip()
            if not v:
                continue
            if "\n" in v or "\r" in v:
                raise ValueError(f"trailer {key} must be one line, got {v!r}")
            out.append((key, v))
    return out


def format_message(
    message: str,
    trailers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
) -> str:
    """Build a commit message: subject, blank line, body, blank line, trailers.

    ``message`` is the subject line optionally followed by the body (the
    operator's reason) -- "subject" or "subject\\n\\nreason". Body lines that
    start with ``---`` get one leading space, because git would otherwise take
    them for a patch divider and stop reading trailers there.
    """
    lines = str(message).replace("\r\n", "\n").replace("\r", "\n").strip("\n").split("\n")
    subject = one_line(lines[0]) if lines else ""
    if not subject:
        raise ValueError("commit message needs a non-empty subject line")
    body_lines = [ln.rstrip() for ln in lines[1:]]
    body_lines = [(" " + ln) if _DIVIDER_RE.match(ln) else ln for ln in body_lines]
    body = "\n".join(body_lines).strip("\n")
    parts = [subject]
    if body.strip():
        parts.append(body)
    pairs = _normalize_trailers(trailers)
    if pairs:
        parts.append("\n".join(f"{k}: {v}" for k, v in pairs))
    return "\n\n".join(parts) + "\n"


def deployer_trailers(action: str, targets: Sequence[str], *, image: str | None = None,
                      previous_images: Sequence[str | None] = (), image_ids: Sequence[str] = (),
                      rollback_to: str | None = None, images: Sequence[str] = (),
                      failed: Sequence[str] = (), rolled_back: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The trailer block of a deployer commit, in the order ``deploy_log`` reads it back.

    One Deployer-Target per target; for deploys and rollbacks the image, one
    Deployer-Previous-Image per target ("none" for a new service), the image
    ids the nodes ended up running (each once) and the commit a rollback went back to.
    ``images`` (one per target) replaces ``image`` when the targets went to different images
    (a rollback of a whole deploy). ``failed`` and ``rolled_back`` name the other targets of the
    command, which are not in the commit: they run what they ran before it.
    """
    pairs = [(TRAILER_ACTION, action)]
    pairs += [(TRAILER_TARGET, str(t)) for t in targets]
    if images:
        pairs += [(TRAILER_IMAGE, i) for i in images]
    elif image is not None:
        pairs.append((TRAILER_IMAGE, image))
    if image is not None or images:
        pairs += [(TRAILER_PREVIOUS_IMAGE, p or "none") for p in previous_images]
        pairs += [(TRAILER_IMAGE_ID, i) for i in dict.fromkeys(i for i in image_ids if i)]
    if rollback_to:
        pairs.append((TRAILER_ROLLBACK_TO, rollback_to))
    pairs += [(TRAILER_FAILED, str(t)) for t in failed]
    pairs += [(TRAILER_ROLLED_BACK, str(t)) for t in rolled_back]
    return pairs


def with_reason(subject: str, reason: str | None) -> str:
    """The commit message: the subject, then the operator's reason as the body when one was given."""
    return subject if not reason else f"{subject}\n\n{reason.strip()}"


def _parse_author(author: str) -> tuple[str, str]:
    m = _AUTHOR_RE.match(author or "")
    if not m or not m.group(1) or not m.group(2).strip():
        raise RepoError(f"invalid author {author!r}: write it as 'Name <email>'")
    return m.group(1), m.group(2).strip()



class CommitMixin(GitRepoBase):
    """Committing: identity, clean checks, staging, the commit itself."""

    def _identity_env(self, author: str | None) -> tuple[list[str], dict[str, str]]:
        """``--author`` arguments and env so that a commit never fails for lack of identity."""
        args: list[str] = []
        if author is not None:
            name, email = _parse_author(author)
            args = [f"--author={name} <{email}>"]
        try:
            out = self._run(
                "config", "--null", "--get-regexp", r"^(user|author|committer)\.(name|email)$", read_only=True
            )
        except RepoError:
            out = ""  # exit 1: no such keys
        conf: dict[str, str] = {}
        for rec in out.split("\0"):
            if not rec.strip():
                continue
            key, _, value = rec.strip("\n").partition("\n")
            if value.strip():
                conf[key.lower()] = value.strip()
        env: dict[str, str] = {}
        try:
            host = socket.gethostname() or "localhost"
        except OSError:  # pragma: no cover
            host = "localhost"
        for role in ("author", "committer"):
            up = role.upper()
            if not (os.environ.get(f"GIT_{up}_NAME") or conf.get(f"{role}.name") or conf.get("user.name")):
                env[f"GIT_{up}_NAME"] = FALLBACK_NAME
            if not (
                os.environ.get(f"GIT_{up}_EMAIL")
                or conf.get(f"{role}.email")
                or conf.get("user.email")
                or os.environ.get("EMAIL")
            ):
                env[f"GIT_{up}_EMAIL"] = f"{FALLBACK_EMAIL_USER}@{host}"
        return args, env

    # -- working tree state --------------------------------------------------

    def is_dirty(self, relpath: str | os.PathLike[str]) -> bool:
        """True when the file differs from HEAD in the index or the work tree, or is untracked."""
        rel = self._rel(relpath)
        out = self._run(
            "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=none", "--", rel,
            read_only=True,
        )
        return bool(out.strip("\0").strip())

    def require_clean(self, relpath: str | os.PathLike[str]) -> None:
        rel = self._rel(relpath)
        if self.is_dirty(rel):
            raise DirtyFileError(f"{rel} has uncommitted changes; commit or stash them first")

    def _stage_new_paths(self, rels: Sequence[str]) -> list[str]:
        """``git add`` the untracked files among ``rels`` (returned, to undo); refuse
        paths that are neither on disk nor tracked, and ignored ones."""
        # one listing: -t tags tracked files "H " (or another status letter) and untracked ones "? "
        listed = [p for p in self._run("ls-files", "-z", "-t", "--cached", "--others", "--exclude-standard", "--",
                                       *rels, read_only=True).split("\0") if p]
        tracked = [p[2:] for p in listed if not p.startswith("? ")]
        untracked = [p[2:] for p in listed if p.startswith("? ")]
        for rel in rels:
            known = [p for p in tracked + untracked if p == rel or p.startswith(rel + "/")]
            if known:
                continue
            if os.path.lexists(self.root / rel):
                raise RepoError(f"{rel} is ignored by git (.gitignore); the deployer will not commit it")
            raise RepoError(f"{rel} does not exist and is not tracked by git; nothing to commit")
        if untracked:
            self._run("add", "--", *untracked)
        return untracked

    # -- committing -----------------------------------------------------------

    def commit_file(
        self,
        relpath: str | os.PathLike[str],
        content: bytes | str,
        message: str,
        trailers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        author: str | None = None,
    ) -> str:
        """Write one file atomically and commit only it; return the new commit's sha.

        Other staged and unstaged changes in the repository are left exactly as
        they were. When the commit fails (a hook refused it, nothing changed...)
        the file's previous content is put back and RepoError is raised.
        Call ``require_clean(relpath)`` before computing ``content``: this method
        overwrites whatever the work tree has.
        """
        rel = self._rel(relpath)
        full = self.root / rel
        if full.is_symlink():
            raise RepoError(f"{rel} is a symbolic link; the deployer will not write through it")
        if full.exists() and not full.is_file():
            raise RepoError(f"{rel} is not a regular file")
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        text = format_message(message, trailers)  # validate before touching anything
        try:
            old: bytes | None = full.read_bytes()
            old_mode: int | None = stat.S_IMODE(full.stat().st_mode)
        except FileNotFoundError:
            old, old_mode = None, None
        try:
            atomic_write(full, data)
        except OSError as exc:
            raise RepoError(f"cannot write {rel}: {exc}") from None
        try:
            return self._commit([rel], text, author)
        except BaseException:
            try:
                if old is None:
                    full.unlink(missing_ok=True)
                else:
                    atomic_write(full, old, old_mode)
            except OSError:  # pragma: no cover - best effort, the original error matters more
                pass
            raise

    def commit_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        message: str,
        trailers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        author: str | None = None,
    ) -> str:
        """Commit exactly these paths as they are in the work tree (new, changed or deleted).

        Other staged and unstaged changes are left as they were. A directory
        path commits every file under it. Returns the new commit's sha.
        """
        rels = sorted({self._rel(p) for p in paths})
        if not rels:
            raise ValueError("commit_paths needs at least one path")
        return self._commit(rels, format_message(message, trailers), author)

    def _commit(self, rels: list[str], text: str, author: str | None) -> str:
        author_args, env = self._identity_env(author)
        # `git commit --only -- paths` refuses paths git does not know yet: add
        # the untracked ones first, and take them out again if the commit fails.
        added = self._stage_new_paths(rels)
        try:
            self._run(
                # no `git maintenance run --auto` (and no auto gc) started by the deploy's commit: that is
                # the repository owner's to schedule, not a process every deploy waits for
                "-c", "maintenance.auto=false", "-c", "gc.auto=0",
                "commit", "--only", "--no-edit", "--cleanup=whitespace", "--quiet",
                *author_args, "-m", text, "--", *rels,
                env=env,
            )
        except RepoError as exc:
            if added:
                try:
                    self._run("rm", "--cached", "--quiet", "--", *added)
                except RepoError:  # pragma: no cover
                    pass
            if not self._differs_from_head(rels):
                what = rels[0] if len(rels) == 1 else ", ".join(rels)
                raise RepoError(f"nothing to commit: {what} {'is' if len(rels) == 1 else 'are'} unchanged from HEAD") from None
            raise exc
        return self._run("rev-parse", "HEAD", read_only=True).strip()

    def _differs_from_head(self, rels: list[str]) -> bool:
        if not self._has_head():
            return True
        try:
            out = self._run("status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *rels, read_only=True)
        except RepoError:
            return True
        return bool(out.strip("\0").strip())

