"""The rules that keep every photo: where a path may be, and when a removal may happen.

Paths arrive in messages and config, so they are untrusted until ``confine`` accepts them.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..messages import Evidence


class Unsafe(Exception):
    """An action was refused; ``str(exc)`` says why in one line."""


#: Trash folders, by name wherever they lie: the freedesktop.org trash at the top of a
#: filesystem (``.Trash-<uid>``, ``.Trash/<uid>``), macOS (``.Trashes``), Windows
#: (``$RECYCLE.BIN``, any case), Synology (``#recycle``) and QNAP (``@Recycle``). What lies in
#: one was thrown away: it is never scanned and never kept (emptying the trash would lose it).
TRASH_FOLDER = re.compile(r"\.Trash(-.*)?|\.Trashes|(?i:\$RECYCLE\.BIN)|#recycle|@Recycle")
#: Folders that hold what a system made of the photos beside them, never photos of their own:
#: NAS thumbnails (Synology ``@eaDir``, QNAP ``.@__thumb``), the freedesktop.org thumbnail
#: cache (``.thumbnails``), and read-only snapshots of the whole share (Synology ``#snapshot``,
#: QNAP ``@Recently-Snapshot``, NetApp ``.snapshot``, ZFS ``.zfs``), whose copy of a photo
#: disappears with the snapshot and so must never be the one kept.
SYSTEM_FOLDER = re.compile(r"@eaDir|\.@__thumb|\.thumbnails|#snapshot|@Recently-Snapshot|\.snapshot|\.zfs")


_NEVER_SCANNED = re.compile(f"(?:{TRASH_FOLDER.pattern})|(?:{SYSTEM_FOLDER.pattern})")


def never_scanned(name: str) -> bool:
    """Is a folder of this name skipped by every scan, whatever the exclusions say?"""
    return _NEVER_SCANNED.fullmatch(name) is not None


def home_trash() -> Path:
    """The desktop trash of this user (freedesktop.org: ``$XDG_DATA_HOME/Trash``)."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(os.path.abspath(data_home)) / "Trash"


def in_trash(path: str | Path) -> bool:
    """Does ``path`` lie in a trash folder (one named as a trash anywhere on its way, or the
    desktop trash)? Such a file may be removed as a duplicate but is never the kept copy."""
    norm = Path(os.path.normpath(os.path.abspath(path)))
    trash = home_trash()
    return any(TRASH_FOLDER.fullmatch(part) for part in norm.parts[:-1]) or trash in norm.parents


def root_of(path: str | Path, roots: Iterable[Path]) -> Path | None:
    """The root that contains ``path`` as it is spelled (lexically, after normalisation). On
    strings: clean-up asks it of every stored path (Path.parents cost 25 us a path)."""
    norm = os.path.normpath(os.path.abspath(path))
    for root in roots:
        spelled = str(root)  # absolute and normalised (shared.config)
        if norm == spelled or norm.startswith(spelled.rstrip(os.sep) + os.sep):
            return root
    return None


def below_root(path: str | Path, roots: Iterable[Path]) -> tuple[Path, Path]:
    """(the normalised absolute path, its root) if ``path`` lies strictly below a root as
    spelled; raise Unsafe otherwise. Says nothing about the disk."""
    norm = Path(os.path.normpath(os.path.abspath(path)))
    root = root_of(norm, roots)
    if root is None or norm == root:
        raise Unsafe(f"{path} is not below a configured root")
    return norm, root


def _no_symlink(path: str | Path, norm: Path, root: Path) -> None:
    if os.path.realpath(norm) != str(Path(os.path.realpath(root)) / norm.relative_to(root)):
        raise Unsafe(f"{path} goes through a symbolic link")


def confine(path: str | Path, roots: Iterable[Path]) -> Path:
    """Return the absolute path if it is a regular file strictly below a root without any
    symlink on the way; raise Unsafe otherwise."""
    norm, root = below_root(path, roots)
    _no_symlink(path, norm, root)
    try:
        mode = os.lstat(norm).st_mode
    except FileNotFoundError:
        raise Unsafe(f"{path} no longer exists") from None
    except OSError as exc:
        raise Unsafe(f"{path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise Unsafe(f"{path} is not a regular file")
    return norm


def confine_folder(path: str | Path, roots: Iterable[Path]) -> Path:
    """Return the absolute path if it is a root or a folder below one without any symlink on
    the way (a rescan walks it, and must not leave the roots); raise Unsafe otherwise."""
    norm = Path(os.path.normpath(os.path.abspath(path)))
    root = root_of(norm, roots)
    if root is None:
        raise Unsafe(f"{path} is not a configured root or below one")
    _no_symlink(path, norm, root)
    if not norm.is_dir():
        raise Unsafe(f"{path} is not a folder")
    return norm


@dataclass(frozen=True, slots=True)
class Observed:
    """A file as it is on disk right now."""

    size: int
    mtime_ns: int
    readable: bool


def removal_refusal(
    *,
    keep: Observed | None,
    keep_expected: tuple[int, int],
    victim: Observed | None,
    victim_expected: tuple[int, int],
    verdict_now: Evidence | None,
    same_file: bool,
) -> str | None:
    """Why removing the victim in favour of the kept file must not happen now, or None.

    ``*_expected`` are the (size, mtime_ns) both files had when they were analysed and matched;
    ``verdict_now`` is ``shared.core.verdict.same_photo`` on the current store records (None
    when either has none), the very function that grouped them.
    """
    if same_file:
        return "the kept file and the duplicate are the same file"
    if keep is None:
        return "the kept file no longer exists"
    if not keep.readable:
        return "the kept file cannot be read"
    if (keep.size, keep.mtime_ns) != keep_expected:
        return "the kept file changed since it was analysed"
    if victim is None:
        return "the duplicate no longer exists"
    if (victim.size, victim.mtime_ns) != victim_expected:
        return "the duplicate changed since it was analysed"
    if verdict_now is None:
        return "no current analysis of both files"
    if not verdict_now.same:
        return f"the files no longer show the same photo: {verdict_now.reason}"
    return None


def observe(path: Path) -> Observed | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        readable = True
    except OSError:
        readable = False
    return Observed(st.st_size, st.st_mtime_ns, readable)
