"""File operations that never overwrite, and the journal that makes them undoable.

Every operation is appended to the journal (JSON lines, fsynced) *before* it happens and
confirmed after, so a crash leaves at worst an intent without a confirmation, which ``undo``
checks against the disk.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import filecmp
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from .core.bundles import renamed

IDENTICAL = "identical already there"  # how a move ended that only deleted its source


def private_folder(path: Path) -> None:
    """Make the folder ``path`` (and its missing parents) unless it exists; the folder made
    here is this user's only (0700): journals, the store and thumbnails tell what photos
    someone has."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def private_file(path: Path) -> None:
    """Create ``path`` empty and this user's only (0600) unless it exists (SQLite then keeps
    that mode for its -wal and -shm files)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


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
                private_folder(self.path.parent)
                self._fh = open(self.path, "a", encoding="ascii", opener=lambda p, flags: os.open(p, flags, 0o600))
                # held while the journal is open: ``recover`` leaves the journals of live runs alone
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
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


@dataclass(frozen=True, slots=True)
class Step:
    """One file of a unit and what happens to it: ``target`` is where a move puts it,
    ``link_to`` the kept file whose bytes a hard link gives it."""

    path: Path
    target: Path | None = None
    link_to: Path | None = None


def unit_targets(files: Sequence[Path], target_of: Callable[[Path], Path]) -> list[Path]:
    """Where the files of a unit go when moved (``target_of`` gives one file's place): under
    the lead's stem, or the first ``stem (n)`` for which no name is taken by another file, so
    that a RAW, its JPEG and their sidecars keep matching names there."""
    stem = os.path.splitext(files[0].name)[0]
    wanted = [target_of(f) for f in files]
    n = 0
    while True:
        new_stem = stem if n == 0 else f"{stem} ({n})"
        names = [t.with_name(renamed(t.name, stem, new_stem)) for t in wanted]
        if all(not os.path.lexists(t) or (t.is_file() and filecmp.cmp(f, t, shallow=False)) for f, t in zip(files, names)):
            return names
        n += 1


def act_on_unit(action: str, steps: Sequence[Step], keep: Path, journal: Journal, distance: float) -> list[dict]:
    """``action`` on every file of a unit, journaled as one action: the intent names every
    file (and where it goes) before the first is touched. When a file fails part-way through
    a move or trash, the files already done go back (never half a unit) and the error is
    raised. Returns each file's result (``target``, ``how``, ``trashinfo``)."""
    planned = []
    for step in steps:
        st = os.stat(step.path)
        planned.append({"path": str(step.path), "target": None if step.target is None else str(step.target),
                        "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    lead = planned[0]
    intent = journal.write(state="intent", action=action, path=lead["path"], keep=str(keep), target=lead["target"],
                           distance=distance, size=lead["size"], mtime_ns=lead["mtime_ns"], files=planned)
    results: list[dict] = []
    try:
        for step in steps:
            results.append(_act_file(action, step))
    except OSError:
        if not results:  # nothing happened: the intent alone says so, as for a lone file
            raise
        if action in ("move", "trash"):
            for done, result in reversed(list(zip(planned, results))):
                _put_back(Path(result["target"]), Path(done["path"]), result.get("trashinfo"))
            journal.write(state="done", intent=intent, recovered="rolled back", files=[])
        else:  # a deleted file cannot come back: the journal says which ones went
            journal.write(state="done", intent=intent, files=results, incomplete=True)
        raise
    first = results[0]
    journal.write(state="done", intent=intent, target=first.get("target"), how=first.get("how", ""),
                  trashinfo=first.get("trashinfo"), files=results)
    return results


def _act_file(action: str, step: Step) -> dict:
    result: dict[str, Any] = {"path": str(step.path)}
    if action == "move":
        assert step.target is not None
        final, how = move_file(step.path, step.target)
        result.update(target=str(final), how=how)
    elif action == "trash":
        final, info = trash_file(step.path)
        result.update(target=str(final), how="moved to the trash", trashinfo=str(info))
    elif action == "hardlink":
        assert step.link_to is not None
        hardlink_file(step.link_to, step.path)
        result.update(target=str(step.link_to))
    else:
        os.unlink(step.path)
    return result


def _put_back(target: Path, src: Path, trashinfo: str | None) -> None:
    move_file(target, src)
    if trashinfo and os.path.exists(trashinfo):
        os.unlink(trashinfo)


def journaled_write(journal: Journal, sidecar: Path, keep: Path, write: Callable[[Path], None]) -> None:
    """``write(sidecar)`` (a kept file's XMP sidecar, made or completed), journaled with the
    sidecar's bytes before, so that undo puts them back (or removes a sidecar it made)."""
    before = sidecar.read_bytes() if sidecar.exists() else None
    intent = journal.write(state="intent", action="merge", path=str(sidecar), keep=str(keep),
                           before=None if before is None else base64.b64encode(before).decode("ascii"))
    write(sidecar)
    journal.write(state="done", intent=intent, sha256=_sha256(sidecar))


def _undo_merge(entry: dict, confirmed: dict | None) -> Undone:
    sidecar = Path(entry["path"])
    if confirmed is not None and confirmed.get("sha256") and sidecar.exists() and _sha256(sidecar) != confirmed["sha256"]:
        return Undone(f"not restored: {sidecar} changed since the metadata was merged into it", True)
    if entry.get("before") is None:
        if sidecar.exists():
            sidecar.unlink()
            return Undone(f"removed {sidecar} (made by the metadata merge)")
        return Undone(f"nothing to undo: {sidecar} is gone")
    tmp = sidecar.with_name(f".{sidecar.name}.{uuid.uuid4().hex[:8]}.undo")
    tmp.write_bytes(base64.b64decode(entry["before"]))
    os.replace(tmp, sidecar)
    return Undone(f"restored {sidecar} as it was before the metadata merge")


def recover(directory: Path) -> list[str]:
    """Settle the actions that a run or an actuator killed part-way left without confirmation
    in the journals of ``directory``, one line each: a move or trash of a unit is rolled back
    when only some of its files had gone (all gone: it is confirmed as finished), a delete is
    finished while the kept file exists, a half-merged sidecar is put back as it was. The
    journals of live runs (locked) are left alone; the settlement is appended to the journal
    it settles, so ``undo`` knows."""
    lines: list[str] = []
    if not directory.is_dir():
        return lines
    intents_at = _intents_by_path(directory)
    for path in sorted(directory.glob("*.jsonl")):
        try:
            fh = open(path, "a", encoding="ascii")
        except OSError:
            continue
        with fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run's journal
            try:
                entries = read_journal(path)
            except JournalError:
                continue
            confirmed = {e["intent"] for e in entries if e["state"] == "done"}
            for entry in entries:
                if entry["state"] != "intent" or entry["id"] in confirmed:
                    continue
                if any(at > entry.get("at", at) for at in intents_at.get(entry["path"], ())):
                    # the same removal begun again since, by an actuator given the decision
                    # after this one died: whatever happened to the files is that action's
                    outcome, files, line = "not done", [], f"not done, taken over by a later action: {entry['path']}"
                else:
                    outcome, files, line = _settle(entry)
                fh.write(json.dumps({"state": "done", "intent": entry["id"], "id": uuid.uuid4().hex, "at": time.time(),
                                     "recovered": outcome, "files": files}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                lines.append(line)
    return lines


def _intents_by_path(directory: Path) -> dict[str, list[float]]:
    """When each action in the journals of ``directory`` (live ones too) was begun, by the
    file it began with."""
    begun: dict[str, list[float]] = {}
    for path in directory.glob("*.jsonl"):
        try:
            entries = read_journal(path)
        except JournalError:
            continue
        for e in entries:
            if e["state"] == "intent" and isinstance(e.get("at"), (int, float)):
                begun.setdefault(e["path"], []).append(e["at"])
    return begun


def _present(planned: dict) -> bool:
    return _matches(Path(planned["path"]), planned)


def _settle(entry: dict) -> tuple[str, list[dict], str]:
    """(how an unconfirmed action was settled, its files' results, a line saying so)."""
    op, planned, lead = entry["action"], files_of(entry), entry["path"]
    if op == "merge":
        return "rolled back", [], _undo_merge(entry, None)
    if op in ("move", "trash"):
        moved = []
        for f in planned:
            where = _unconfirmed(op, f)
            if where is not None and _present(f) and os.path.samefile(where[0], f["path"]):
                os.unlink(where[0])  # killed between the link and the unlink: the new name goes
                where = None
            if where is not None and not os.path.lexists(f["path"]):
                moved.append((f, where))
        if not moved:
            return "not done", [], f"not done, nothing to settle: {lead}"
        if len(moved) == len(planned):
            files = [{"path": f["path"], "target": w[0], "how": "moved", "trashinfo": w[1]} for f, w in moved]
            return "finished", files, f"finished: {lead} and the {len(planned) - 1} other files of its unit had all gone"
        for f, (target, info) in moved:
            _put_back(Path(target), Path(f["path"]), info)
        return "rolled back", [], f"rolled back: {len(moved)} of the {len(planned)} files of {lead} put back"
    gone = [f for f in planned if not os.path.lexists(f["path"])]
    if op == "hardlink" or not gone:
        linked = [{"path": f["path"]} for f in planned if os.path.exists(f["path"])]
        return ("finished" if gone or op == "hardlink" else "not done"), linked, f"settled: {lead}"
    if not os.path.exists(entry["keep"]):
        return "incomplete", [{"path": f["path"]} for f in gone], f"left as it is: {lead} (its kept twin is gone)"
    for f in planned:
        if _present(f):
            os.unlink(f["path"])
    return "finished", [{"path": f["path"]} for f in planned], f"finished deleting {lead} and its unit"


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


def files_of(entry: dict) -> list[dict]:
    """The files of a journal entry: a unit's (``files``), or the one file of an entry written
    before units existed (``path``, ``target``, ``size``, ``mtime_ns``, ``how``, ``trashinfo``)."""
    if isinstance(entry.get("files"), list):
        return entry["files"]
    return [{k: entry[k] for k in ("path", "target", "size", "mtime_ns", "how", "trashinfo") if k in entry}]


@dataclass(frozen=True, slots=True)
class Undone:
    """What undo did about one file, in one line; ``not_restored`` when it could not be put
    back as it was (the command then exits non-zero and counts them)."""

    text: str
    not_restored: bool = False


def undo(*journal_paths: Path) -> list[Undone]:
    """Revert the confirmed actions of one or more journals, newest first across all of them
    (a file removed later may have been the kept twin of one removed earlier); returns one
    outcome per file. An action on a unit (an image with its RAW, sidecars and video) is undone
    whole. Undoing a journal again restores nothing twice."""
    entries = [e for path in journal_paths for e in read_journal(path)]
    done = {e["intent"]: e for e in entries if e.get("state") == "done"}
    intents = sorted((e for e in entries if e.get("state") == "intent"), key=lambda e: e.get("at", 0.0))
    out = []
    for entry in reversed(intents):
        confirmed = done.get(entry["id"])
        if confirmed is not None and confirmed.get("recovered") in ("rolled back", "not done"):
            out.append(Undone(f"not done, nothing to undo: {entry['path']} ({confirmed['recovered']} by a later run)"))
            continue
        if entry["action"] == "merge":
            out.append(_guarded(entry["path"], _undo_merge, entry, confirmed))
            continue
        if confirmed is None:
            results = {}
        elif isinstance(confirmed.get("files"), list):
            results = {r.get("path"): r for r in confirmed["files"]}
        else:  # written before units existed: the confirmation of its one file
            results = {entry["path"]: confirmed}
        for planned in files_of(entry):
            out.append(_guarded(planned["path"], _undo_file, entry, planned, results.get(planned["path"])))
    return out


def _guarded(path: str, step: Callable[..., Undone], *args: Any) -> Undone:
    try:
        return step(*args)
    except OSError as exc:  # e.g. no permission to write the folder back into
        return Undone(f"cannot restore {path}: {exc.strerror or exc}", True)


def _undo_file(entry: dict, planned: dict, result: dict | None) -> Undone:
    """One file of an action back where it was: ``planned`` is its part of the intent,
    ``result`` of the confirmation (None: no confirmation, the process died meanwhile)."""
    src, op = Path(planned["path"]), entry["action"]
    if op in ("move", "trash"):
        target, trashinfo = (result.get("target"), result.get("trashinfo")) if result else (None, None)
        if result is None:
            # crashed between the action and its confirmation: find the file by its size and
            # mtime (a move keeps both) where it may have gone
            found = _unconfirmed(op, planned)
            if found is None:
                return Undone(f"not done, nothing to undo: {src}")
            target, trashinfo = found
        identical = result is not None and result.get("how") == IDENTICAL
        if src.exists():
            if identical or target is None or not Path(target).exists():
                return Undone(f"already back: {src}")
            return Undone(f"not restored: {src} exists again; the moved file stays at {target}", True)
        if target is None or not Path(target).exists():
            return Undone(f"cannot restore {src}: {target} is gone", True)
        if not _matches(Path(target), planned, check_mtime=False):
            return Undone(f"not restored: {target} changed since {src} was moved there", True)
        if identical:
            # the file at the target was there before this run: copy it back, leave it there
            final = copy_verified(Path(target), src)
            return Undone(f"restored {final} (copied from the identical {target}, which stays)")
        final, how = move_file(Path(target), src)
        if trashinfo and os.path.exists(trashinfo):
            os.unlink(trashinfo)
        return Undone(f"restored {final} ({'from the trash' if op == 'trash' else how})")
    if result is None:
        return Undone(f"not done, nothing to undo: {src}")
    if op == "hardlink":
        if not result.get("linked", True):
            return Undone(f"nothing to undo: {src} was not linked")
        if not src.exists():
            return Undone(f"nothing to undo: {src} no longer exists (it was a hard link to {entry['keep']})")
        tmp = src.with_name(f".{src.name}.{uuid.uuid4().hex[:8]}.undo")
        shutil.copy2(src, tmp)
        os.replace(tmp, src)
        return Undone(f"unlinked {src} (it now holds its own copy of the kept photo)")
    return Undone(f"cannot restore deleted {src}; its kept twin is {entry['keep']}", True)


def _unconfirmed(op: str, planned: dict) -> tuple[str, str | None] | None:
    """Where an action without confirmation left its file, if it did: (file, .trashinfo)."""
    if op == "trash":
        if "size" not in planned:
            return None
        found = find_trashed(Path(planned["path"]), planned["size"], planned["mtime_ns"])
        return None if found is None else (str(found[0]), str(found[1]))
    moved = _moved_copy(Path(planned["target"]), planned) if planned.get("target") else None
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
