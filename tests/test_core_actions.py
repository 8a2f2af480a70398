"""shared/actions.py: moves that never overwrite, hard links, the journal, undo, empty folders."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from shared import actions
from shared.actions import Journal, hardlink_file, move_file, remove_empty_folders, undo


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# move


def test_move_to_a_free_name_keeps_the_bytes_and_removes_the_source(tmp_path):
    src = _write(tmp_path / "src" / "a.jpg", b"photo-a")
    final, how = move_file(src, tmp_path / "dst" / "deep" / "a.jpg")
    assert final == tmp_path / "dst" / "deep" / "a.jpg" and how == "moved"
    assert final.read_bytes() == b"photo-a"
    assert not src.exists()


def test_move_never_overwrites_a_different_file(tmp_path):
    src = _write(tmp_path / "src" / "a.jpg", b"new photo")
    existing = _write(tmp_path / "dst" / "a.jpg", b"someone else's photo")
    _write(tmp_path / "dst" / "a (1).jpg", b"and another one")
    final, how = move_file(src, existing)
    assert final == tmp_path / "dst" / "a (2).jpg"
    assert final.read_bytes() == b"new photo"
    assert existing.read_bytes() == b"someone else's photo"
    assert (tmp_path / "dst" / "a (1).jpg").read_bytes() == b"and another one"
    assert not src.exists()


def test_move_onto_an_identical_file_just_lets_the_source_go(tmp_path):
    src = _write(tmp_path / "src" / "a.jpg", b"same bytes")
    existing = _write(tmp_path / "dst" / "a.jpg", b"same bytes")
    inode = existing.stat().st_ino
    final, how = move_file(src, existing)
    assert final == existing and "identical" in how
    assert not src.exists()
    assert existing.read_bytes() == b"same bytes" and existing.stat().st_ino == inode
    assert sorted(p.name for p in existing.parent.iterdir()) == ["a.jpg"]


def test_move_onto_itself_never_loses_the_file(tmp_path):
    src = _write(tmp_path / "a.jpg", b"only copy")
    with pytest.raises(OSError):
        move_file(src, tmp_path / "a.jpg")
    assert src.read_bytes() == b"only copy"


def _no_link(*args, **kwargs):
    raise OSError(errno.EXDEV, "Invalid cross-device link")


def test_move_across_filesystems_copies_verifies_and_unlinks(tmp_path, monkeypatch):
    src = _write(tmp_path / "src" / "a.jpg", b"x" * 100_000)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    _write(tmp_path / "dst" / "a.jpg", b"a different photo")
    monkeypatch.setattr(os, "link", _no_link)
    fsynced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsynced.append(fd), real_fsync(fd))[1])
    final, how = move_file(src, tmp_path / "dst" / "a.jpg")
    assert how == "copied across filesystems and verified"
    assert final == tmp_path / "dst" / "a (1).jpg"
    assert final.read_bytes() == b"x" * 100_000
    assert final.stat().st_mtime == 1_600_000_000  # metadata copied too
    assert (tmp_path / "dst" / "a.jpg").read_bytes() == b"a different photo"
    assert not src.exists()
    assert fsynced, "the copy is fsynced before the source goes"
    assert _leftovers(tmp_path / "dst") == []


def test_move_across_filesystems_keeps_the_source_when_the_copy_does_not_verify(tmp_path, monkeypatch):
    src = _write(tmp_path / "src" / "a.jpg", b"precious bytes")
    monkeypatch.setattr(os, "link", _no_link)

    def bad_copy(a, b, **kw):
        Path(b).write_bytes(b"precious bytez")

    monkeypatch.setattr(shutil, "copy2", bad_copy)
    with pytest.raises(OSError):
        move_file(src, tmp_path / "dst" / "a.jpg")
    assert src.read_bytes() == b"precious bytes"
    assert not (tmp_path / "dst" / "a.jpg").exists()
    assert list((tmp_path / "dst").iterdir()) == []  # no .partial left behind


def test_move_other_link_errors_are_raised_and_the_source_stays(tmp_path, monkeypatch):
    src = _write(tmp_path / "src" / "a.jpg", b"bytes")

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", no_space)
    with pytest.raises(OSError):
        move_file(src, tmp_path / "dst" / "a.jpg")
    assert src.read_bytes() == b"bytes"


# --------------------------------------------------------------------------------------------
# hard link


def test_hardlink_replaces_the_duplicate_by_a_link_to_the_kept_file(tmp_path):
    keep = _write(tmp_path / "keep.jpg", b"best")
    victim = _write(tmp_path / "sub" / "dup.jpg", b"worse")
    hardlink_file(keep, victim)
    assert victim.stat().st_ino == keep.stat().st_ino
    assert keep.stat().st_nlink == 2
    assert victim.read_bytes() == b"best"
    assert _leftovers(victim.parent) == []


def test_hardlink_refuses_across_filesystems(tmp_path, monkeypatch):
    keep = _write(tmp_path / "keep.jpg", b"best")
    victim = _write(tmp_path / "dup.jpg", b"worse")
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, **kw: (
        os.stat_result(tuple(real_stat(p, **kw))[:2] + (12345,) + tuple(real_stat(p, **kw))[3:])
        if str(p) == str(victim) else real_stat(p, **kw)))
    with pytest.raises(OSError):
        hardlink_file(keep, victim)
    monkeypatch.undo()
    assert victim.read_bytes() == b"worse" and victim.stat().st_ino != keep.stat().st_ino


# --------------------------------------------------------------------------------------------
# journal and undo


def test_journal_lines_are_json_fsynced_and_appended(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    journal = Journal.new(tmp_path / "journals")
    first = journal.write(state="intent", action="move", path="/r/a.jpg", keep="/r/b.jpg", target="/t/a.jpg")
    # visible on disk (from another reader) before anything else happens
    lines = journal.path.read_text(encoding="utf-8").splitlines()
    assert len(synced) == 1
    assert json.loads(lines[0])["id"] == first and json.loads(lines[0])["state"] == "intent"
    journal.write(state="done", intent=first, target="/t/a.jpg")
    journal.close()
    entries = [json.loads(l) for l in journal.path.read_text(encoding="utf-8").splitlines()]
    assert [e["state"] for e in entries] == ["intent", "done"] and entries[1]["intent"] == first
    assert len(synced) == 2
    assert journal.path.suffix == ".jsonl" and journal.path.parent == tmp_path / "journals"


def _journaled_move(journal: Journal, src: Path, dst: Path) -> Path:
    """As the actuator journals a move (services/actuator/handler.py _act)."""
    st = src.stat()
    intent = journal.write(state="intent", action="move", path=str(src), keep="/k.jpg", target=str(dst),
                           size=st.st_size, mtime_ns=st.st_mtime_ns)
    final, how = move_file(src, dst)
    journal.write(state="done", intent=intent, target=str(final), how=how)
    return final


def test_journal_is_created_on_its_first_entry_only(tmp_path):
    journal = Journal.new(tmp_path / "journals")
    journal.close()
    assert not (tmp_path / "journals").exists(), "a run that acted on nothing leaves no journal"
    journal = Journal.new(tmp_path / "journals")
    journal.write(state="intent", action="delete", path="/r/a.jpg", keep="/r/b.jpg")
    journal.close()
    assert journal.written and journal.path.is_file()


def test_journal_keeps_names_that_are_not_utf8(tmp_path):
    name = os.fsdecode(b"caf\xe9\nlatte.jpg")
    journal = Journal.new(tmp_path / "j")
    journal.write(state="intent", action="delete", path=f"/r/{name}", keep="/r/k.jpg")
    journal.close()
    raw = journal.path.read_bytes()
    assert b"\\udce9" in raw and raw.count(b"\n") == 1, "one ASCII line per entry"
    [entry] = actions.read_journal(journal.path)
    assert os.fsencode(entry["path"]) == b"/r/caf\xe9\nlatte.jpg"


def test_undo_of_a_move_onto_an_identical_file_copies_it_back_and_leaves_that_file(tmp_path):
    """The file at the target was there before the run: undo restores the source from it by
    copying, and the pre-existing file stays where it was, untouched."""
    journal = Journal.new(tmp_path / "j")
    src = _write(tmp_path / "lib" / "a.jpg", b"same bytes")
    existing = _write(tmp_path / "t" / "a.jpg", b"same bytes")
    before = existing.stat()
    _journaled_move(journal, src, existing)
    journal.close()
    [done] = [e for e in actions.read_journal(journal.path) if e["state"] == "done"]
    assert done["how"] == actions.IDENTICAL
    [line] = undo(journal.path)
    assert src.read_bytes() == b"same bytes" and "copied" in line.text and not line.not_restored
    after = existing.stat()
    assert existing.read_bytes() == b"same bytes" and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert src.stat().st_ino != after.st_ino


@pytest.mark.parametrize("content, message", [
    (None, "cannot read journal"),
    (b"not json at all\n", "is not an image-dedup journal"),
    (b'{"some": "json"}\n', "is not an image-dedup journal"),
])
def test_undo_of_something_that_is_not_a_journal_says_so(tmp_path, content, message):
    path = tmp_path / "j.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(actions.JournalError, match=message):
        undo(path)


def test_trash_records_where_the_file_went_and_undo_brings_it_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path))
    trash = tmp_path / "data" / "Trash"
    # an older entry for the same path (another file, trashed earlier) must not be taken
    older = _write(tmp_path / "lib" / "a.jpg", b"an older photo")
    actions.trash_file(older)
    src = _write(tmp_path / "lib" / "a.jpg", b"the duplicate")
    journal = Journal.new(tmp_path / "j")
    st = src.stat()
    intent = journal.write(state="intent", action="trash", path=str(src), keep="/k.jpg", target=None,
                           size=st.st_size, mtime_ns=st.st_mtime_ns)
    trashed, info = actions.trash_file(src)
    journal.write(state="done", intent=intent, target=str(trashed), trashinfo=str(info))
    journal.close()
    assert trashed == trash / "files" / "a 1.jpg" and trashed.read_bytes() == b"the duplicate"
    assert info == trash / "info" / "a 1.jpg.trashinfo" and not src.exists()
    [line] = undo(journal.path)
    assert line.text.startswith("restored") and src.read_bytes() == b"the duplicate"
    assert not trashed.exists() and not info.exists()
    assert (trash / "files" / "a.jpg").read_bytes() == b"an older photo", "the older entry stays in the trash"


def test_undo_of_an_unconfirmed_trash_finds_the_file_in_the_trash(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path))
    src = _write(tmp_path / "lib" / os.fsdecode(b"caf\xe9.jpg"), b"photo")
    journal = Journal.new(tmp_path / "j")
    st = src.stat()
    journal.write(state="intent", action="trash", path=str(src), keep="/k.jpg", target=None,
                  size=st.st_size, mtime_ns=st.st_mtime_ns)
    actions.trash_file(src)  # then the process died before confirming
    journal.close()
    [line] = undo(journal.path)
    assert line.text.startswith("restored") and src.read_bytes() == b"photo"
    assert os.listdir(tmp_path / "data" / "Trash" / "info") == []


def test_undo_restores_moved_files(tmp_path):
    journal = Journal.new(tmp_path / "j")
    a = _write(tmp_path / "lib" / "a.jpg", b"A")
    b = _write(tmp_path / "lib" / "sub" / "b.jpg", b"B")
    _journaled_move(journal, a, tmp_path / "t" / "a.jpg")
    _journaled_move(journal, b, tmp_path / "t" / "sub" / "b.jpg")
    journal.close()
    assert not a.exists() and not b.exists()
    lines = undo(journal.path)
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B"
    assert not (tmp_path / "t" / "a.jpg").exists()
    assert all(line.text.startswith("restored") for line in lines), lines


@pytest.mark.parametrize("order", ["as written", "reversed", "folder"])
def test_undo_of_several_journals_goes_back_newest_first_across_them(tmp_path, order):
    """Two actuators, two journals: the first moved lib/a.jpg away, then a new lib/a.jpg
    appeared and the second actuator moved that one. Undone newest first across both journals,
    lib/a.jpg is the second file again and the first stays in the target, whatever order the
    journals are named in."""
    first, second = Journal(tmp_path / "j" / "one.jsonl"), Journal(tmp_path / "j" / "two.jsonl")
    _journaled_move(first, _write(tmp_path / "lib" / "a.jpg", b"first"), tmp_path / "t" / "a.jpg")
    _journaled_move(second, _write(tmp_path / "lib" / "a.jpg", b"second"), tmp_path / "t" / "a.jpg")
    _journaled_move(first, _write(tmp_path / "lib" / "b.jpg", b"B"), tmp_path / "t" / "b.jpg")
    first.close(), second.close()
    named = {"as written": [first.path, second.path], "reversed": [second.path, first.path],
             "folder": [tmp_path / "j"]}[order]
    lines = undo(*actions.journal_files(named))
    assert (tmp_path / "lib" / "a.jpg").read_bytes() == b"second"
    assert (tmp_path / "lib" / "b.jpg").read_bytes() == b"B"
    assert (tmp_path / "t" / "a.jpg").read_bytes() == b"first"
    assert [(line.text.split()[0], line.not_restored) for line in lines] == [
        ("restored", False), ("restored", False), ("not", True)], "the first a.jpg cannot go back: its place is taken"


def test_undo_of_a_folder_without_journals_says_so(tmp_path):
    with pytest.raises(actions.JournalError, match="no journals in"):
        actions.journal_files([tmp_path])


def test_undo_restores_from_the_free_name_actually_used(tmp_path):
    """When the target name was taken the file went to 'a (1).jpg'; undo must bring back
    that file, and leave the unrelated file that sat at the target alone."""
    journal = Journal.new(tmp_path / "j")
    src = _write(tmp_path / "lib" / "a.jpg", b"the duplicate")
    other = _write(tmp_path / "t" / "a.jpg", b"unrelated photo already in the target")
    final = _journaled_move(journal, src, tmp_path / "t" / "a.jpg")
    journal.close()
    assert final.name == "a (1).jpg"
    undo(journal.path)
    assert src.read_bytes() == b"the duplicate"
    assert other.read_bytes() == b"unrelated photo already in the target"
    assert not final.exists()


def test_undo_is_careful(tmp_path):
    journal = Journal.new(tmp_path / "j")
    # moved, then a file appeared at the old place again: left alone
    a = _write(tmp_path / "lib" / "a.jpg", b"A")
    _journaled_move(journal, a, tmp_path / "t" / "a.jpg")
    _write(a, b"new A")
    # deleted: cannot come back, undo says where the twin is
    d = _write(tmp_path / "lib" / "d.jpg", b"D")
    intent = journal.write(state="intent", action="delete", path=str(d), keep="/lib/twin.jpg", target=None)
    d.unlink()
    journal.write(state="done", intent=intent, target=None)
    # intent without confirmation, nothing happened
    n = _write(tmp_path / "lib" / "n.jpg", b"N")
    journal.write(state="intent", action="move", path=str(n), keep="/k.jpg", target=str(tmp_path / "t" / "n.jpg"))
    # crashed between the move and its confirmation: restored
    c = _write(tmp_path / "lib" / "c.jpg", b"C")
    journal.write(state="intent", action="move", path=str(c), keep="/k.jpg", target=str(tmp_path / "t" / "c.jpg"))
    move_file(c, tmp_path / "t" / "c.jpg")
    journal.close()

    lines = undo(journal.path)
    text = "\n".join(line.text for line in lines)
    assert a.read_bytes() == b"new A" and (tmp_path / "t" / "a.jpg").read_bytes() == b"A"
    assert f"not restored: {a} exists again" in text
    assert [line.not_restored for line in lines] == [False, False, True, True], "the new a.jpg and the deleted d.jpg"
    assert f"cannot restore deleted {d}" in text and "/lib/twin.jpg" in text
    assert n.read_bytes() == b"N" and f"not done, nothing to undo: {n}" in text
    assert c.read_bytes() == b"C" and not (tmp_path / "t" / "c.jpg").exists()
    assert len(lines) == 4


def test_undo_of_a_hardlink_gives_the_file_its_own_copy(tmp_path):
    journal = Journal.new(tmp_path / "j")
    keep = _write(tmp_path / "keep.jpg", b"best")
    victim = _write(tmp_path / "dup.jpg", b"worse")
    intent = journal.write(state="intent", action="hardlink", path=str(victim), keep=str(keep), target=None)
    hardlink_file(keep, victim)
    journal.write(state="done", intent=intent, target=None)
    journal.close()
    undo(journal.path)
    assert victim.read_bytes() == b"best"
    assert victim.stat().st_ino != keep.stat().st_ino and keep.stat().st_nlink == 1


# --------------------------------------------------------------------------------------------
# empty folders


def test_remove_empty_folders_only_below_roots_and_only_when_empty(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "keep" / "x").mkdir(parents=True)
    _write(root / "keep" / "file.jpg", b"f")
    (root / "already-empty").mkdir()
    outside = tmp_path / "outside" / "empty"
    outside.mkdir(parents=True)

    removed = remove_empty_folders([root / "a" / "b" / "c", root / "keep" / "x", outside, root], [root])
    assert set(removed) == {root / "a" / "b" / "c", root / "a" / "b", root / "a", root / "keep" / "x"}
    assert root.is_dir(), "a root is never removed"
    assert (root / "keep" / "file.jpg").exists()
    assert (root / "already-empty").is_dir(), "only folders passed in (and their emptied parents)"
    assert outside.is_dir(), "nothing outside the roots"


def test_remove_empty_folders_leaves_a_folder_holding_an_empty_folder(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "was-empty").mkdir(parents=True)
    assert remove_empty_folders([root / "a"], [root]) == []
    assert (root / "a" / "was-empty").is_dir()


def test_undo_after_a_crash_finds_the_moved_file_by_size_and_mtime(tmp_path):
    """A crash between the move and its confirmation: the intent names the wanted target, but
    that name was taken, so the file went to 'name (1)'; undo must not take the unrelated file."""
    src = tmp_path / "lib" / "a.jpg"
    src.parent.mkdir()
    src.write_bytes(b"the duplicate")
    st = os.stat(src)
    target = tmp_path / "dups" / "a.jpg"
    target.parent.mkdir()
    target.write_bytes(b"an unrelated file that was there before")
    journal = Journal(tmp_path / "j.jsonl")
    journal.write(state="intent", action="move", path=str(src), keep="k", target=str(target),
                  distance=0.0, size=st.st_size, mtime_ns=st.st_mtime_ns)
    final, _ = move_file(src, target)  # ...and the process died before writing "done"
    journal.close()
    assert final == target.with_name("a (1).jpg")

    undo(journal.path)

    assert src.read_bytes() == b"the duplicate"
    assert target.read_bytes() == b"an unrelated file that was there before"
    assert not final.exists()


def test_undo_leaves_a_target_that_changed_since_the_move(tmp_path):
    src = tmp_path / "lib" / "a.jpg"
    src.parent.mkdir()
    src.write_bytes(b"the duplicate")
    st = os.stat(src)
    journal = Journal(tmp_path / "j.jsonl")
    intent = journal.write(state="intent", action="move", path=str(src), keep="k",
                           target=str(tmp_path / "dups" / "a.jpg"), distance=0.0,
                           size=st.st_size, mtime_ns=st.st_mtime_ns)
    final, _ = move_file(src, tmp_path / "dups" / "a.jpg")
    journal.write(state="done", intent=intent, target=str(final))
    journal.close()
    final.write_bytes(b"someone reused this name for something else")

    lines = undo(journal.path)

    assert not src.exists()
    assert "changed since" in lines[0].text and lines[0].not_restored
