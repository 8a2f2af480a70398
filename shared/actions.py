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
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()  # actions run on worker threads

    @classmethod
    def new(cls, directory: Path, name: str = "run") -> Journal:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return cls(directory / f"{stamp}-{name}-{uuid.uuid4().hex[:8]}.jsonl")

    def write(self, **entry: Any) -> str:
        entry.setdefault("id", uuid.uuid4().hex)
        entry["at"] = time.time()
        with self._lock:
            self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        return entry["id"]

    def close(self) -> None:
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
    deleted and the final path is ``dst`` itself. Across filesystems the file is copied to a
    temporary name, fsynced and verified by SHA-256 before the source is unlinked.
    """
    if os.path.realpath(src) == os.path.realpath(dst):
        raise OSError(errno.EINVAL, f"{src} would be moved onto itself")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        os.unlink(src)
        return dst, "identical file already at target"
    try:
        final = _link_no_overwrite(src, dst)
        os.unlink(src)
        return final, "moved"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
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
    os.unlink(src)
    return final, "copied across filesystems and verified"


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


def undo(journal_path: Path) -> list[str]:
    """Revert a journal's confirmed actions, newest first; returns one line per action."""
    entries = [json.loads(line) for line in journal_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    done = {e["intent"] for e in entries if e.get("state") == "done"}
    final_targets = {e["intent"]: e["target"] for e in entries if e.get("state") == "done" and e.get("target")}
    lines = []
    for entry in reversed([e for e in entries if e.get("state") == "intent"]):
        # the confirmation holds where the file really went (a free name if the target was taken)
        src, target, op = Path(entry["path"]), final_targets.get(entry["id"]), entry["action"]
        if op == "move":
            if entry["id"] not in done:
                # crashed between the move and its confirmation: find the moved file by its
                # size and mtime (a move keeps both) among the names it may have been given
                target = _moved_copy(Path(entry["target"]), entry) if entry.get("target") else None
                if target is None:
                    lines.append(f"not done, nothing to undo: {src}")
                    continue
            if src.exists():
                lines.append(f"skipped, {src} exists again")
            elif not Path(target).exists():
                lines.append(f"cannot restore {src}: {target} is gone")
            elif not _matches(Path(target), entry, check_mtime=False):
                lines.append(f"skipped, {target} changed since it was moved there")
            else:
                final, how = move_file(Path(target), src)
                lines.append(f"restored {final} ({how})")
        elif entry["id"] not in done:
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
