"""The infrastructure repository as git: commits with trailers, history, older images.

Every deploy edits one compose file's ``image:`` and commits it with a
structured message, so ``git log`` *is* the infrastructure's history::

    deploy dev/dev1/worker: registry/worker:2

    Operator's reason, as typed (optional).

    Deployer-Action: deploy
    Deployer-Target: dev/dev1/worker
    Deployer-Image: registry/worker:2
    Deployer-Previous-Image: registry/worker:1

The last paragraph is a git trailer block (``git interpret-trailers --parse``
reads it back, ``%(trailers)`` in ``git log --format`` too).

Only this module and ``lock.py`` talk to git. GitPython is imported lazily (inside
functions) so that importing the package stays fast; YAML likewise.

Reading history:

* ``InfraRepo.deploy_log()`` -- one ``git log`` call, one entry per commit that
  has a ``Deployer-Action`` trailer, newest first.
* ``InfraRepo.service_versions()`` -- the images one service had, newest first,
  read from each commit that touched its compose file (one persistent
  ``git cat-file --batch`` process, parse results cached per blob).
* ``InfraRepo.resolve_rollback()`` -- which image (and which commit) a rollback
  goes back to.

Team use through a git remote
-----------------------------

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

import os
import re
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from deployer.errors import DirtyFileError, RepoError, RollbackError
from deployer.files import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import git

# Trailer keys written into deploy commits.
TRAILER_ACTION = "Deployer-Action"  # deploy | rollback
TRAILER_TARGET = "Deployer-Target"  # dc/node/service; repeated for multi-node deploys
TRAILER_IMAGE = "Deployer-Image"
TRAILER_PREVIOUS_IMAGE = "Deployer-Previous-Image"
TRAILER_IMAGE_ID = "Deployer-Image-Id"
TRAILER_ROLLBACK_TO = "Deployer-Rollback-To"  # full commit sha

ACTION_DEPLOY = "deploy"
ACTION_ROLLBACK = "rollback"

DEPLOYER_TRAILERS = (
    TRAILER_ACTION,
    TRAILER_TARGET,
    TRAILER_IMAGE,
    TRAILER_PREVIOUS_IMAGE,
    TRAILER_IMAGE_ID,
    TRAILER_ROLLBACK_TO,
)

# Identity used for commits when neither the environment nor git config names one.
FALLBACK_NAME = "deployer"
FALLBACK_EMAIL_USER = "deployer"

_TRAILER_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_AUTHOR_RE = re.compile(r"^\s*([^<>]*?)\s*<([^<>]*)>\s*$")
# git's trailer parser treats a line starting with "---" + whitespace as the
# start of a patch and stops looking for trailers there (trailer.c).
_DIVIDER_RE = re.compile(r"^---(\s|$)")


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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _git_plain(args: list[str], cwd: Path | None = None, env: Mapping[str, str] | None = None,
               timeout: float | None = None) -> tuple[int, str, str]:
    """``git <args>``: (exit status, stdout, stderr). 124 when killed after ``timeout``.

    Plain subprocesses, like GitPython's ``execute`` (C locale, the caller's
    environment plus ``env``), without importing GitPython on the deploy path.
    """
    import subprocess

    full_env = {**os.environ, "LC_ALL": "C", "LANGUAGE": "C", **(env or {})}
    try:
        done = subprocess.run(["git", *args], cwd=cwd, env=full_env, capture_output=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return 124, "", f"git {args[0] if args else ''} timed out after {timeout} s"
    decode = lambda b: b.decode("utf-8", "surrogateescape")  # noqa: E731
    return done.returncode, decode(done.stdout), decode(done.stderr)


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
    subject = _one_line(lines[0]) if lines else ""
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


def _parse_author(author: str) -> tuple[str, str]:
    m = _AUTHOR_RE.match(author or "")
    if not m or not m.group(1) or not m.group(2).strip():
        raise RepoError(f"invalid author {author!r}: write it as 'Name <email>'")
    return m.group(1), m.group(2).strip()


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


class InfraRepo:
    """The infrastructure git repository, opened at its work-tree root.

    Paths taken and returned are repo-relative POSIX strings
    (``datacenters/dev/dev1/docker-compose.yml``); absolute paths inside the
    root are accepted too. Call ``close()`` (or use ``with``) to stop the
    ``git cat-file`` helper processes early.
    """

    def __init__(self, root: Path, common_dir: Path):
        self.root = root
        self._common_dir = common_dir
        self._gitpython: "git.Repo | None" = None  # opened on first use: only history reads need it
        self._parsed: dict[str, Any] = {}  # blob sha -> parsed YAML (None: did not parse)
        self._yaml: Any = None

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "InfraRepo":
        p = Path(path).expanduser()
        if not p.exists():
            raise RepoError(f"{path} is not a git repository (it does not exist)")
        p = p.resolve()
        status, out, _ = _git_plain(["-C", str(p), "rev-parse", "--is-bare-repository", "--absolute-git-dir"])
        if status != 0:
            raise RepoError(f"{path} is not a git repository")
        bare, git_dir = (out.splitlines() + ["", ""])[:2]
        if bare.strip() == "true":
            raise RepoError(f"{path} is a bare git repository; the deployer needs a working tree")
        status, out, _ = _git_plain(["-C", str(p), "rev-parse", "--show-toplevel", "--git-common-dir"])
        top, common = (out.splitlines() + ["", ""])[:2]
        if status != 0 or not top:
            raise RepoError(f"{path} is not a git repository")
        root = Path(top).resolve()
        if root != p:
            raise RepoError(f"{path} is not the root of a git repository (it is inside {root})")
        common_dir = Path(common) if Path(common).is_absolute() else p / common
        return cls(root, common_dir.resolve())

    @property
    def _repo(self) -> "git.Repo":
        """GitPython, for its persistent ``git cat-file`` readers (history walks)."""
        if self._gitpython is None:
            import git

            self._gitpython = git.Repo(self.root)
        return self._gitpython

    def close(self) -> None:
        if self._gitpython is not None:
            self._gitpython.close()

    def __enter__(self) -> "InfraRepo":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def git_dir(self) -> Path:
        """The repository's common .git directory (shared by all worktrees): where the lock lives."""
        return self._common_dir

    # -- plumbing ------------------------------------------------------------

    def _run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        read_only: bool = False,
        strip: bool = True,
    ) -> str:
        """Run ``git <args>`` in the root; a failure -> RepoError with git's message in one line."""
        cmd = ["--literal-pathspecs"]
        if read_only:
            cmd.append("--no-optional-locks")
        cmd.extend(args)
        status, out, err = _git_plain(cmd, cwd=self.root, env=env)
        if status != 0:
            raise RepoError(f"git {args[0]} failed in {self.root}: {_one_line(err.strip() or out.strip() or f'exit status {status}')}")
        return out[:-1] if strip and out.endswith("\n") else out

    def _rel(self, relpath: str | os.PathLike[str]) -> str:
        """A repo-relative POSIX path, refusing anything outside the root."""
        raw = os.fspath(relpath)
        p = Path(raw)
        if p.is_absolute():
            try:
                p = p.relative_to(self.root)
            except ValueError:
                try:
                    p = p.parent.resolve().relative_to(self.root) / p.name
                except ValueError:
                    raise RepoError(f"{raw} is outside the repository {self.root}") from None
        parts = PurePosixPath(p.as_posix()).parts
        parts = tuple(x for x in parts if x != ".")
        if not parts or ".." in parts or parts[0] == ".git":
            raise RepoError(f"invalid repository path {raw!r}")
        return "/".join(parts)

    def _has_head(self) -> bool:
        try:
            self._run("rev-parse", "--verify", "--quiet", "HEAD^{commit}", read_only=True)
            return True
        except RepoError:
            return False

    def rev_parse(self, rev: str) -> str | None:
        """The full sha of the commit ``rev`` names, or None when it names none."""
        if not rev or rev.startswith("-"):
            return None
        status, out, _ = _git_plain(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"],
                                    cwd=self.root)
        if status != 0:
            return None
        out = out.strip()
        return out if re.fullmatch(r"[0-9a-f]{40,64}", out) else None

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
        tracked = [p for p in self._run("ls-files", "-z", "--", *rels, read_only=True).split("\0") if p]
        untracked = [
            p
            for p in self._run("ls-files", "-z", "--others", "--exclude-standard", "--", *rels, read_only=True).split("\0")
            if p
        ]
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

    # -- history ----------------------------------------------------------------

    def deploy_log(self, target_prefix: str | None = None, limit: int | None = None) -> list[HistoryEntry]:
        """Deployer commits reachable from HEAD, newest first.

        ``target_prefix`` keeps the commits with a Deployer-Target equal to it or
        under it at a path-component boundary ("dev" matches "dev/dev1/worker",
        not "devx/n/web"). ``limit`` caps the number of entries returned.
        """
        if limit is not None and limit <= 0:
            return []
        if not self._has_head():
            return []
        prefix = (target_prefix or "").strip().strip("/")
        fields = ["%H", "%h", "%cI", "%an", "%ae", "%s", "%b", "%(trailers:only,unfold)"]
        fmt = "%x00".join(fields) + "%x00"
        out = self._run(
            "log", "--no-show-signature", "--encoding=UTF-8", "--fixed-strings", "--regexp-ignore-case",
            f"--grep={TRAILER_ACTION}", f"--format={fmt}", "HEAD", "--",
            read_only=True, strip=False,
        )
        parts = out.split("\0")
        n = len(fields)
        entries: list[HistoryEntry] = []
        for i in range(0, len(parts) - n + 1, n):
            sha, short, time, an, ae, subject, body, trailer_text = parts[i : i + n]
            entry = _make_entry(sha.strip(), short, time, an, ae, subject, body, trailer_text)
            if entry is None:
                continue
            if prefix and not any(t == prefix or t.startswith(prefix + "/") for t in entry.targets):
                continue
            entries.append(entry)
            if limit is not None and len(entries) >= limit:
                break
        return entries

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

    # -- team use: a shared git remote -----------------------------------------

    def _git_status(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float | None = None
    ) -> tuple[int, str, str]:
        """Run ``git <args>`` in the root; (exit status, stdout, stderr), never raising for a failure."""
        return _git_plain(list(args), cwd=self.root, env=env, timeout=timeout)

    def current_branch(self) -> str | None:
        """The checked-out branch's short name; None when HEAD is detached."""
        status, out, _ = self._git_status("symbolic-ref", "--quiet", "--short", "HEAD")
        return (out.strip() or None) if status == 0 else None

    def _config_get(self, key: str) -> str | None:
        status, out, _ = self._git_status("config", "--get", key)
        return (out.strip() or None) if status == 0 else None

    def _remote_spec(self) -> tuple[str, str, str | None] | None:
        """(remote, remote branch ref, local branch) that deploys sync with and push to, or None.

        The current branch's upstream (``branch.<name>.remote`` + ``.merge``) when one is
        configured, otherwise the remote named ``origin`` and the branch of the same name.
        ``local branch`` is None when HEAD is detached.
        """
        branch = self.current_branch()
        if branch:
            remote = self._config_get(f"branch.{branch}.remote")
            merge = self._config_get(f"branch.{branch}.merge")
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
            text = _one_line(err)
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
                    f"{_one_line(ab_err)}; run 'git status' and repair by hand"
                )
        if conflicts:
            return conflicts
        text = _one_line(err) or _one_line(out) or f"exit status {status}"
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
        import random
        import time as _time

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
                text = rejected or _one_line(err) or _one_line(out) or f"exit status {status}"
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
                     f"({_one_line(err)}); 'git reset --keep {upstream[:12]}' once they are dealt with")
        raise RepoError(
            f"push rejected and rebase hit a conflict in {', '.join(conflicts)}: another operator changed it; "
            f"your deploy commit {local[:12]} is kept locally at {ref}; {after}"
        )

    def _backup_ref(self, sha: str) -> str:
        """Create ``refs/deployer/unpushed/<UTC time>`` (unique) pointing at ``sha``."""
        import time as _time

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

    def tracked_files(self, relpath: str | os.PathLike[str]) -> list[str]:
        """The files git tracks at or under ``relpath`` (repo-relative, sorted)."""
        rel = self._rel(relpath)
        out = self._run("ls-files", "-z", "--", rel, read_only=True)
        return sorted(p for p in out.split("\0") if p)

    def unpushed_refs(self) -> list[tuple[str, str]]:
        """(ref, sha) of the commits kept by failed pushes, oldest first."""
        out = self._run("for-each-ref", "--format=%(refname)%00%(objectname)", UNPUSHED_REF_PREFIX.rstrip("/"),
                        read_only=True)
        pairs = [tuple(line.split("\0", 1)) for line in out.splitlines() if "\0" in line]
        return sorted((r, s) for r, s in pairs)  # type: ignore[misc]


_MISSING: Any = object()


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


# -- team use: helpers -------------------------------------------------------------

NETWORK_TIMEOUT = 300  # seconds for one git fetch/push: a hung remote must not hold the deploy lock forever
UNPUSHED_REF_PREFIX = "refs/deployer/unpushed/"


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
