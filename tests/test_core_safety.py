"""shared/core/safety.py and the actuator (services/actuator/handler.py): a removal only happens when
the kept twin is there, readable, unchanged and still matching, and only inside the roots."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from shared import actions

from services.actuator import handler as actuator
from services.actuator.handler import PairBusy, handle_decision
from shared.actions import Journal
from shared.bus import Reject
from shared.config import Settings
from shared.messages import Decision, Evidence, FileRef, Removal, decode
from shared.core.safety import Observed, Unsafe, confine, confine_folder, observe, removal_refusal, root_of
from shared.image.signature import analyze
from shared.store.sqlite import SQLiteStore
from shared.store.sqlite_ledger import SQLiteLedger
from shared.store import ImageRecord

from .conftest import save_photo, tree_state

pytestmark = pytest.mark.usefixtures("isolated_env")


# --------------------------------------------------------------------------------------------
# confine


def test_confine_accepts_regular_files_below_a_root(tmp_path):
    root = tmp_path / "root"
    f = root / "sub" / "a.jpg"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"x")
    assert confine(str(f), [root]) == f
    assert confine(str(root / "sub" / "." / "a.jpg"), [root]) == f  # harmless spelling
    assert root_of(f, [tmp_path / "other", root]) == root


@pytest.mark.parametrize("path, roots, expected", [
    ("/p/a.jpg", ["/p"], "/p"), ("/p", ["/p"], "/p"), ("/p/x/../a.jpg", ["/p"], "/p"),
    ("/px/a.jpg", ["/p"], None), ("/p/../q/a.jpg", ["/p"], None), ("/q/a.jpg", ["/p", "/q"], "/q"),
    ("/anything/a.jpg", ["/"], "/"), ("/", ["/"], "/"), ("/p/q/a.jpg", ["/p/q", "/p"], "/p/q"),
])
def test_root_of_is_lexical_and_exact(path, roots, expected):
    found = root_of(path, [Path(r) for r in roots])
    assert found == (None if expected is None else Path(expected))


@pytest.mark.parametrize("spelling", [
    "{outside}/b.jpg",
    "{root}/../outside/b.jpg",
    "{root}/sub/../../outside/b.jpg",
    "{root}",
    "{root}/",
    "{root}x/b.jpg",  # a sibling whose name starts like the root
])
def test_confine_refuses_paths_outside_the_roots(tmp_path, spelling):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "b.jpg").write_bytes(b"x")
    (tmp_path / "rootx").mkdir()
    (tmp_path / "rootx" / "b.jpg").write_bytes(b"x")
    with pytest.raises(Unsafe, match="not below a configured root"):
        confine(spelling.format(root=root, outside=outside), [root])


def test_confine_refuses_symlinks_out_of_and_within_the_roots(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "b.jpg").write_bytes(b"x")
    (root / "real.jpg").write_bytes(b"x")
    (root / "link.jpg").symlink_to(outside / "b.jpg")
    (root / "inner-link.jpg").symlink_to(root / "real.jpg")
    (root / "dirlink").symlink_to(outside)
    for p in (root / "link.jpg", root / "dirlink" / "b.jpg", root / "inner-link.jpg"):
        with pytest.raises(Unsafe, match="symbolic link"):
            confine(p, [root])


def test_confine_accepts_a_root_that_is_itself_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.jpg").write_bytes(b"x")
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    assert confine(alias / "a.jpg", [alias]) == alias / "a.jpg"


def test_confine_folder_accepts_roots_and_real_folders_below_them_only(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "dirlink").symlink_to(outside)
    (root / "inner").symlink_to(root / "sub")
    (root / "a.jpg").write_bytes(b"x")
    assert confine_folder(root, [root]) == root
    assert confine_folder(f"{root}/sub/", [root]) == root / "sub"
    for folder in (root / "dirlink", root / "dirlink" / ".", root / "inner"):
        with pytest.raises(Unsafe, match="symbolic link"):
            confine_folder(folder, [root])
    for folder in (outside, f"{root}/../outside", tmp_path):
        with pytest.raises(Unsafe, match="not a configured root or below one"):
            confine_folder(folder, [root])
    for folder in (root / "a.jpg", root / "gone"):
        with pytest.raises(Unsafe, match="not a folder"):
            confine_folder(folder, [root])


def test_confine_refuses_missing_files_and_folders(tmp_path):
    root = tmp_path / "root"
    (root / "dir.jpg").mkdir(parents=True)
    with pytest.raises(Unsafe, match="no longer exists"):
        confine(root / "gone.jpg", [root])
    with pytest.raises(Unsafe, match="not a regular file"):
        confine(root / "dir.jpg", [root])


# --------------------------------------------------------------------------------------------
# removal_refusal and observe


SAME = Evidence(same=True, stage="goldberg", distance=0.05)


def _refusal(**changes):
    args = dict(keep=Observed(10, 1, True), keep_expected=(10, 1), victim=Observed(20, 2, True),
                victim_expected=(20, 2), verdict_now=SAME, same_file=False)
    args.update(changes)
    return removal_refusal(**args)


def test_removal_refusal_reasons():
    assert _refusal() is None
    assert "same file" in _refusal(same_file=True)
    assert _refusal(keep=None) == "the kept file no longer exists"
    assert _refusal(keep=Observed(10, 1, False)) == "the kept file cannot be read"
    assert _refusal(keep=Observed(11, 1, True)) == "the kept file changed since it was analysed"
    assert _refusal(keep=Observed(10, 5, True)) == "the kept file changed since it was analysed"
    assert _refusal(victim=None) == "the duplicate no longer exists"
    assert _refusal(victim=Observed(20, 3, True)) == "the duplicate changed since it was analysed"
    assert _refusal(verdict_now=None) == "no current analysis of both files"
    assert _refusal(verdict_now=Evidence(same=False, stage="none", reason="parts moved")) == (
        "the files no longer show the same photo: parts moved")


def test_observe(tmp_path):
    f = tmp_path / "a.jpg"
    f.write_bytes(b"abc")
    st = f.stat()
    assert observe(f) == Observed(3, st.st_mtime_ns, True)
    assert observe(tmp_path / "missing.jpg") is None


def test_observe_unreadable_file(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: file permissions do not apply, chmod 000 stays readable")
    f = tmp_path / "a.jpg"
    f.write_bytes(b"abc")
    f.chmod(0)
    try:
        assert observe(f).readable is False
    finally:
        f.chmod(0o644)


# --------------------------------------------------------------------------------------------
# the actuator, against real files and a real store


class World:
    """A root with a kept photo K and its duplicate X (and Y), analysed into a store."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "lib"
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        self.K = save_photo(self.root / "K.jpg", 7, (320, 240), exif_tags=3)
        self.X = save_photo(self.root / "sub" / "X.jpg", 7, (200, 150), quality=80)
        self.Y = save_photo(self.root / "Y.jpg", 7, (240, 180), quality=85)
        self.store = SQLiteStore(tmp_path / "store.sqlite")
        self.ledger = SQLiteLedger(tmp_path / "store.sqlite")
        self.journal_dir = tmp_path / "journals"
        self.journal = Journal.new(self.journal_dir)
        self.published: list = []

    async def sign(self, *paths: Path) -> None:
        for p in paths:
            a = analyze(str(p))
            st = p.stat()
            await self.store.upsert(ImageRecord(
                path=str(p), root=str(self.root), size=st.st_size, mtime_ns=st.st_mtime_ns, format=a.format,
                width=a.width, height=a.height, exif_tags=a.exif_tags, signature=a.signature,
                digest=a.digest, frames=a.frames, embedding=a.embedding))

    def settings(self, **kw) -> Settings:
        base = dict(source_directories=[self.root], dry_run=False, journal_directory=self.journal_dir,
                    store_path=self.store.path)
        if "duplicates_target_directory" not in kw:
            base["action"] = "delete"  # not the default trash: these tests are about the checks
        base.update(kw)
        return Settings(**base)

    @staticmethod
    def ref(path: Path) -> dict:
        st = os.stat(path)
        return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def decision(self, keep: Path, *remove: Path, distance: float = 0.1) -> Decision:
        return Decision(keep=FileRef(**self.ref(keep)),
                        remove=[Removal(**self.ref(r), distance=distance) for r in remove])

    async def act(self, decision: Decision, retry_refused: bool = False, **settings):
        async def publish(msg):
            self.published.append(msg)

        return await handle_decision(decision, store=self.store, ledger=self.ledger, settings=self.settings(**settings),
                                     journal=self.journal, publish=publish, retry_refused=retry_refused)

    def journal_entries(self) -> list[dict]:
        return [json.loads(l) for l in self.journal.path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
async def world(tmp_path):
    w = World(tmp_path)
    await w.sign(w.K, w.X, w.Y)
    yield w
    w.journal.close()
    await w.store.close()
    await w.ledger.close()


async def test_removal_happens_when_everything_checks_out(world):
    decision = world.decision(world.K, world.X)
    [outcome] = await world.act(decision)
    assert outcome.status == "done" and outcome.action == "delete", outcome
    assert not world.X.exists() and world.K.exists()
    assert await world.store.get(str(world.X)) is None
    assert [m.path for m in world.published] == [str(world.X)]
    states = [(e["state"], e.get("action")) for e in world.journal_entries()]
    assert states == [("intent", "delete"), ("done", None)]


async def test_journal_intent_is_on_disk_before_the_file_is_touched(world, monkeypatch):
    seen = []
    real_move = actions.move_file

    def spying_move(src, dst):
        entries = [json.loads(l) for l in world.journal.path.read_text(encoding="utf-8").splitlines()]
        seen.append([(e["state"], e.get("path")) for e in entries])
        assert src.exists()
        return real_move(src, dst)

    monkeypatch.setattr(actions, "move_file", spying_move)
    target = world.root.parent / "dups"
    [outcome] = await world.act(world.decision(world.K, world.X), duplicates_target_directory=target)
    assert outcome.status == "done"
    assert seen == [[("intent", str(world.X))]]
    assert (target / "lib" / "sub" / "X.jpg").exists()
    entries = world.journal_entries()
    assert entries[-1]["state"] == "done" and entries[-1]["target"] == str(target / "lib" / "sub" / "X.jpg")


async def test_dry_run_checks_but_changes_nothing(world):
    before = tree_state(world.root)
    outcomes = await world.act(world.decision(world.K, world.X, world.Y), dry_run=True)
    assert [o.status for o in outcomes] == ["dry_run", "dry_run"]
    assert tree_state(world.root) == before
    assert world.journal_entries() == [] if world.journal.path.exists() else True
    # and a dry run leases nothing: a real decision afterwards may still act
    [o] = await world.act(world.decision(world.X, world.K))
    assert o.status == "done"


async def _expect_skip(world, decision, reason_part, **settings):
    before = tree_state(world.root, world.outside)
    outcomes = await world.act(decision, **settings)
    assert outcomes and all(o.status == "skipped" for o in outcomes), outcomes
    assert all(reason_part in o.reason for o in outcomes), [o.reason for o in outcomes]
    assert tree_state(world.root, world.outside) == before
    assert not world.journal.path.exists() or world.journal_entries() == []
    return outcomes


async def _expect_reject(world, decision, reason_part):
    """A decision that can never be carried out raises Reject (dead-lettered with the reason)."""
    before = tree_state(world.root, world.outside)
    with pytest.raises(Reject, match=reason_part):
        await world.act(decision)
    assert tree_state(world.root, world.outside) == before
    assert not world.journal.path.exists() or world.journal_entries() == []


async def test_skipped_when_the_kept_file_vanished(world):
    decision = world.decision(world.K, world.X)
    world.K.unlink()
    await _expect_skip(world, decision, "no longer exists")
    assert world.X.exists()


async def test_skipped_when_the_kept_file_changed(world):
    decision = world.decision(world.K, world.X)
    with open(world.K, "ab") as fh:
        fh.write(b"\0")
    await _expect_skip(world, decision, "the kept file changed")


async def test_skipped_when_only_the_kept_files_mtime_changed(world):
    decision = world.decision(world.K, world.X)
    os.utime(world.K, ns=(0, world.K.stat().st_mtime_ns + 10**9))
    await _expect_skip(world, decision, "the kept file changed")


async def test_skipped_when_the_duplicate_changed(world):
    decision = world.decision(world.K, world.X)
    save_photo(world.X, 99, (200, 150))
    await _expect_skip(world, decision, "the duplicate changed")


async def test_skipped_when_the_kept_file_is_unreadable(world, monkeypatch):
    decision = world.decision(world.K, world.X)
    real_observe = actuator.observe
    monkeypatch.setattr(actuator, "observe", lambda p: (
        Observed(real_observe(p).size, real_observe(p).mtime_ns, False) if p == world.K else real_observe(p)))
    await _expect_skip(world, decision, "cannot be read")


async def test_skipped_when_the_kept_file_has_no_current_signature(world):
    decision = world.decision(world.K, world.X)
    await world.store.delete(str(world.K))
    await _expect_skip(world, decision, "no current analysis")


async def test_skipped_when_the_verdict_no_longer_says_same_photo(world):
    decision = world.decision(world.K, world.X)
    await _expect_skip(world, decision, "no longer show the same photo", max_dist=0.001, min_similarity=1.0)


async def test_skipped_when_the_store_holds_another_image_for_the_kept_file(world):
    # same size and mtime as analysed, but the store's signature is of a different picture
    decision = world.decision(world.K, world.X)
    other = analyze(str(save_photo(world.outside / "other.jpg", 123)))
    k = await world.store.get(str(world.K))
    await world.store.upsert(ImageRecord(path=k.path, root=k.root, size=k.size, mtime_ns=k.mtime_ns,
                                         signature=other.signature))
    await _expect_skip(world, decision, "no longer show the same photo")


async def test_same_file_is_never_removed(world):
    twin = world.root / "K-link.jpg"
    os.link(world.K, twin)
    await world.sign(twin)
    await _expect_skip(world, world.decision(world.K, twin), "same file")
    assert world.K.exists() and twin.exists()


async def test_decision_paths_outside_the_roots_are_refused(world):
    victim = save_photo(world.outside / "X.jpg", 7, (200, 150))
    ref = World.ref(victim)
    for spelled in (str(victim), f"{world.root}/../outside/X.jpg", f"{world.root}/sub/../../outside/X.jpg"):
        decision = Decision(keep=FileRef(**World.ref(world.K)), remove=[Removal(**{**ref, "path": spelled}, distance=0.1)])
        await _expect_reject(world, decision, "not below a configured root")
    assert victim.exists()
    # a decision that arrives as JSON from the bus is just as untrusted
    body = json.dumps({"kind": "group.decision", "version": 1, "keep": World.ref(world.K),
                       "remove": [{**ref, "path": f"{world.root}/../outside/X.jpg", "distance": 0.1}]})
    await _expect_reject(world, decode(body), "not below a configured root")
    # one removal outside the roots refuses the whole decision, also the valid removals in it
    decision = Decision(keep=FileRef(**World.ref(world.K)),
                        remove=[Removal(**World.ref(world.X), distance=0.1), Removal(**ref, distance=0.1)])
    await _expect_reject(world, decision, "not below a configured root")
    assert world.X.exists()


async def test_kept_path_outside_the_roots_refuses_the_whole_decision(world):
    outside_keep = save_photo(world.outside / "K.jpg", 7)
    decision = Decision(keep=FileRef(**{**World.ref(outside_keep), "path": f"{world.root}/../outside/K.jpg"}),
                        remove=[Removal(**World.ref(world.X), distance=0.1)])
    await _expect_reject(world, decision, "not below a configured root")


async def test_symlink_out_of_the_root_is_refused(world):
    target = save_photo(world.outside / "precious.jpg", 7, (200, 150))
    link = world.root / "link.jpg"
    link.symlink_to(target)
    decision = Decision(keep=FileRef(**World.ref(world.K)),
                        remove=[Removal(path=str(link), size=target.stat().st_size,
                                        mtime_ns=target.stat().st_mtime_ns, distance=0.1)])
    await _expect_skip(world, decision, "symbolic link")
    assert target.exists() and link.is_symlink()


async def test_a_pair_leased_by_another_action_is_skipped_locally_and_retried_in_services(world):
    assert await world.ledger.acquire(str(world.K), str(world.X), "another actuator")
    before = tree_state(world.root)
    decision = world.decision(world.Y, world.K)  # wants K, kept by the other action, removed
    [o] = await world.act(decision)
    assert o.status == "skipped" and o.reason == "another action on this pair is in progress"
    with pytest.raises(PairBusy, match="another action on this pair is in progress"):
        await world.act(decision, retry_refused=True)
    assert tree_state(world.root) == before
    assert not world.journal.path.exists() or world.journal_entries() == []
    await world.ledger.release(str(world.K), str(world.X), "another actuator")
    [o] = await world.act(decision, retry_refused=True)  # the retry, once the other action ended
    assert o.status == "done" and not world.K.exists() and world.Y.exists()


async def test_two_decisions_cannot_remove_both_files_of_a_pair(world):
    # concurrently: keep K remove Y, and keep Y remove K
    a, b = await asyncio.gather(world.act(world.decision(world.K, world.Y)), world.act(world.decision(world.Y, world.K)))
    done = [o for o in a + b if o.status == "done"]
    assert len(done) == 1
    assert world.K.exists() or world.Y.exists()
    assert sum(p.exists() for p in (world.K, world.Y)) == 1


async def test_hardlink_action_through_the_actuator(world):
    [o] = await world.act(world.decision(world.K, world.X), action="hardlink")
    assert o.status == "done" and o.action == "hardlink"
    assert world.X.stat().st_ino == world.K.stat().st_ino


async def test_move_keeps_the_path_below_the_root_under_the_roots_name(world, tmp_path):
    target = tmp_path / "dups"
    [o] = await world.act(world.decision(world.K, world.X), duplicates_target_directory=target)
    assert o.status == "done" and o.action == "move"
    assert o.target == str(target / "lib" / "sub" / "X.jpg")
    assert Path(o.target).exists() and not world.X.exists()


async def test_failed_action_is_reported_as_error_not_raised(world, monkeypatch):
    def fail(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "unlink", fail)
    [o] = await world.act(world.decision(world.K, world.X))
    monkeypatch.undo()
    assert o.status == "error" and "Permission denied" in o.reason
    assert world.X.exists()
    assert await world.ledger.acquire(str(world.X), str(world.K), "next")  # the lease ended with the action
