"""File operations that never overwrite, and the journal that makes them undoable.

Every operation is appended to the journal (JSON lines, fsynced) *before* it happens and
confirmed after, so a crash leaves at worst an intent without a confirmation, which ``undo``
checks against the disk.
"""

from __future__ import annotations

import errno
import filecmp
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

IDENTICAL = "identical already there"  # how a move ended that only deleted its source


class JournalError(Exception):
    """A journal cannot be read; ``str(exc)`` says why in one line."""


class Journal:
    """Created on its first entry, so a run or a daemon start that acts on nothing leaves no
    empty journal behind. Entries are ASCII JSON: a file name that is not valid UTF-8 (held as
    surrogate escapes) is written as ``\\udcXX`` and comes back intact through ``json.loads``."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None
        self._lock = threading.Lock()  # actions run on worker threads

    @classmethod
    def new(cls, directory: Path, name: str = "run") -> Journal:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return cls(directory / f"{stamp}-{name}-{uuid.uuid4().hex[:8]}.jsonl")

    def write(self, **entry: Any) -> str:
        entry.setdefault("id", uuid.uuid4().hex)
        entry["at"] = time.time()
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="ascii")
            self._fh.write(json.dumps(entry) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return entry["id"]

    @property
    def written(self) -> bool:
        return self._fh is not None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _free_name(dst: Path) -> Path:
    """``dst`` or the first ``name (n).ext`` that does not exist yet."""
    candidate, n = dst, 1
    while os.path.lexists(candidate):
        candidate = dst.with_name(f"{dst.stem} ({n}){dst.suffix}")
        n += 1
    return candidate


def _link_no_overwrite(src: Path, dst: Path) -> Path:
    """Give ``src`` the new name ``dst`` (or a free variant of it) without ever replacing a file."""
    while True:
        dst = _free_name(dst)
        try:
            os.link(src, dst)
            return dst
        except FileExistsError:
            continue  # someone took the name in between: try the next one


def move_file(src: Path, dst: Path) -> tuple[Path | None, str]:
    """Move ``src`` to ``dst`` without overwriting anything.

    Returns (final path, how). If an identical file already sits at ``dst`` the source is just
    deleted, the final path is ``dst`` itself and ``how`` is IDENTICAL (undo then copies it
    back and leaves that file alone: it was not this move's). Across filesystems the file is
    copied, fsynced and verified by SHA-256 before the source is unlinked.
    """
    if os.path.realpath(src) == os.path.realpath(dst):
        raise OSError(errno.EINVAL, f"{src} would be moved onto itself")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        os.unlink(src)
        return dst, IDENTICAL
    try:
        final = _link_no_overwrite(src, dst)
        os.unlink(src)
        return final, "moved"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
    final = copy_verified(src, dst)
    os.unlink(src)
    return final, "copied across filesystems and verified"


def copy_verified(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` (or a free variant of it) through a temporary name, fsynced and
    verified by SHA-256, never replacing a file; returns the name used."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        shutil.copy2(src, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if _sha256(src) != _sha256(tmp):
            raise OSError(f"copy of {src} to {tmp} does not verify")
        final = _free_name(dst)
        os.rename(tmp, final)  # same directory; _free_name made sure nothing is there
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


# -- the desktop trash (freedesktop.org trash spec, through send2trash) -----------------------


def trash_file(path: Path) -> tuple[Path, Path]:
    """Move ``path`` to the desktop trash; returns (the file in the trash, its .trashinfo), so
    the journal can say where it went and undo can bring it back."""
    from send2trash import plat_other

    # send2trash reads XDG_DATA_HOME once, at import; a daemon (or a test) may have changed it
    plat_other.XDG_DATA_HOME = os.path.expanduser(os.environb.get(b"XDG_DATA_HOME", b"~/.local/share"))
    plat_other.HOMETRASH_B = os.path.join(plat_other.XDG_DATA_HOME, b"Trash")
    plat_other.HOMETRASH = os.fsdecode(plat_other.HOMETRASH_B)
    st = os.stat(path)
    plat_other.send2trash(os.fsencode(path))
    found = find_trashed(path, st.st_size, st.st_mtime_ns, st.st_ino)
    if found is None:
        raise OSError(errno.ENOENT, f"{path} went to the trash, but its entry there was not found")
    return found


def _trash_dirs(path: Path) -> list[tuple[bytes, bytes]]:
    """(trash folder, the top folder its relative Path= entries start from) where send2trash
    may have put ``path``: the home trash, or the trash at the top of path's filesystem."""
    data_home = os.path.expanduser(os.environb.get(b"XDG_DATA_HOME", b"~/.local/share"))
    dirs = [(os.path.join(data_home, b"Trash"), data_home)]
    top = os.fsencode(os.path.realpath(path.parent))
    while not os.path.ismount(top):
        top = os.path.dirname(top)
    uid = str(os.getuid()).encode()
    dirs += [(os.path.join(top, b".Trash", uid), top), (os.path.join(top, b".Trash-" + uid), top)]
    return dirs


def find_trashed(path: Path, size: int, mtime_ns: int, ino: int | None = None) -> tuple[Path, Path] | None:
    """The trashed copy of ``path``: a .trashinfo whose Path is ``path`` and whose file has the
    size and mtime ``path`` had (the same inode preferred); the newest such entry wins."""
    wanted = os.fsencode(os.path.abspath(path))
    stem = os.path.splitext(os.path.basename(wanted))[0]
    best: tuple[tuple, bytes, bytes] | None = None
    for trash, top in _trash_dirs(path):
        info_dir, files_dir = os.path.join(trash, b"info"), os.path.join(trash, b"files")
        try:
            entries = [e for e in os.scandir(info_dir) if e.name.startswith(stem) and e.name.endswith(b".trashinfo")]
        except OSError:
            continue
        for entry in entries:
            try:
                with open(entry.path, "rb") as fh:
                    lines = fh.read().splitlines()
                [spelled] = [line[5:] for line in lines if line.startswith(b"Path=")]
                st = os.lstat(os.path.join(files_dir, entry.name[: -len(b".trashinfo")]))
                info_mtime = entry.stat().st_mtime_ns
            except (OSError, ValueError):
                continue
            if os.path.join(top, unquote_to_bytes(spelled)) != wanted or (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                continue
            rank = (st.st_ino == ino, info_mtime)
            if best is None or rank > best[0]:
                best = (rank, os.path.join(files_dir, entry.name[: -len(b".trashinfo")]), entry.path)
    if best is None:
        return None
    return Path(os.fsdecode(best[1])), Path(os.fsdecode(best[2]))


def hardlink_file(keep: Path, victim: Path) -> None:
    """Replace ``victim`` by a hard link to ``keep`` (atomic rename over it)."""
    if os.stat(keep).st_dev != os.stat(victim).st_dev:
        raise OSError(errno.EXDEV, "not on the same filesystem as the kept file")
    tmp = victim.with_name(f".{victim.name}.{uuid.uuid4().hex[:8]}.link")
    os.link(keep, tmp)
    os.replace(tmp, victim)


def remove_empty_folders(folders: Iterable[Path], roots: Iterable[Path]) -> list[Path]:
    """Remove each folder (and then its parents) while it is empty and strictly below a root.

    Callers pass only folders they emptied themselves, so a folder that was empty before is
    never touched.
    """
    roots = list(roots)
    removed: list[Path] = []
    for folder in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
        while any(root in folder.parents for root in roots):
            try:
                os.rmdir(folder)  # fails unless empty
            except OSError:
                break
            removed.append(folder)
            folder = folder.parent
    return removed


def read_journal(journal_path: Path) -> list[dict]:
    """The entries of a journal; raises JournalError (one line) for a missing file or one that
    is not a journal."""
    try:
        text = journal_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JournalError(f"cannot read journal {journal_path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        raise JournalError(f"{journal_path} is not an image-dedup journal (not JSON lines)") from None
    for e in entries:
        if not (isinstance(e, dict) and isinstance(e.get("id"), str) and e.get("state") in ("intent", "done")
                and (e["state"] == "done" or (isinstance(e.get("path"), str) and "action" in e))):
            raise JournalError(f"{journal_path} is not an image-dedup journal (unexpected entry)")
    return entries


def journal_files(paths: Sequence[Path]) -> list[Path]:
    """Journal files, a folder standing for every journal in it (each actuator writes its own)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise JournalError(f"no journals in {path}")
            files += found
        else:
            files.append(path)
    return files


def undo(*journal_paths: Path) -> list[str]:
    """Revert the confirmed actions of one or more journals, newest first across all of them
    (a file removed later may have been the kept twin of one removed earlier); returns one line
    per action."""
    entries = [e for path in journal_paths for e in read_journal(path)]
    done = {e["intent"]: e for e in entries if e.get("state") == "done"}
    intents = sorted((e for e in entries if e.get("state") == "intent"), key=lambda e: e.get("at", 0.0))
    lines = []
    for entry in reversed(intents):
        # the confirmation holds where the file really went (a free name if the target was taken)
        confirmed = done.get(entry["id"])
        src, op = Path(entry["path"]), entry["action"]
        target = confirmed.get("target") if confirmed else None
        if op in ("move", "trash"):
            trashinfo = confirmed.get("trashinfo") if confirmed else None
            if confirmed is None:
                # crashed between the action and its confirmation: find the file by its size and
                # mtime (a move keeps both) where it may have gone
                found = _unconfirmed(entry)
                if found is None:
                    lines.append(f"not done, nothing to undo: {src}")
                    continue
                target, trashinfo = found
            if src.exists():
                lines.append(f"skipped, {src} exists again")
            elif not Path(target).exists():
                lines.append(f"cannot restore {src}: {target} is gone")
            elif not _matches(Path(target), entry, check_mtime=False):
                lines.append(f"skipped, {target} changed since it was moved there")
            elif confirmed is not None and confirmed.get("how") == IDENTICAL:
                # the file at the target was there before this run: copy it back, leave it there
                final = copy_verified(Path(target), src)
                lines.append(f"restored {final} (copied from the identical {target}, which stays)")
            else:
                final, how = move_file(Path(target), src)
                if trashinfo and os.path.exists(trashinfo):
                    os.unlink(trashinfo)
                lines.append(f"restored {final} ({'from the trash' if op == 'trash' else how})")
        elif confirmed is None:
            lines.append(f"not done, nothing to undo: {src}")
        elif op == "hardlink":
            if src.exists():
                tmp = src.with_name(f".{src.name}.{uuid.uuid4().hex[:8]}.undo")
                shutil.copy2(src, tmp)
                os.replace(tmp, src)
                lines.append(f"unlinked {src} (it now holds its own copy of the kept photo)")
        else:
            lines.append(f"cannot restore deleted {src}; its kept twin is {entry['keep']}")
    return lines


def _unconfirmed(entry: dict) -> tuple[str, str | None] | None:
    """Where an action without confirmation left its file, if it did: (file, .trashinfo)."""
    if entry["action"] == "trash":
        if "size" not in entry:
            return None
        found = find_trashed(Path(entry["path"]), entry["size"], entry["mtime_ns"])
        return None if found is None else (str(found[0]), str(found[1]))
    moved = _moved_copy(Path(entry["target"]), entry) if entry.get("target") else None
    return None if moved is None else (str(moved), None)


def _matches(path: Path, entry: dict, check_mtime: bool = True) -> bool:
    """Is ``path`` still the file the journal entry moved (same size, and mtime if asked:
    an identical file that was already at the target has its own mtime)?"""
    if "size" not in entry:
        return True
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == entry["size"] and (not check_mtime or st.st_mtime_ns == entry["mtime_ns"])


def _moved_copy(target: Path, entry: dict) -> Path | None:
    candidate, n = target, 1
    while os.path.lexists(candidate):
        if _matches(candidate, entry):
            return candidate
        candidate = target.with_name(f"{target.stem} ({n}){target.suffix}")
        n += 1
    return None
