"""Real photo libraries (issue 19): RAW files, RAW+JPEG units, sidecars, Live Photos, Takeout
JSON, reference folders and the metadata of removed copies, through the whole command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared import actions
from shared.core import bundles
from shared.image import metadata as meta
from shared.image.signature import ImageError, analyze, distance
from PIL import Image

from tests.conftest import photo_at, save_photo, tree_state
from tests.library_support import write_dng

EXTS = [".jpg", ".heic", ".dng", ".nef", ".png"]


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """The picture ``save_photo`` writes for ``seed`` at ``size`` (its copies' original)."""
    return photo_at(seed, size)


# --------------------------------------------------------------------------------------------
# decoding


@pytest.mark.parametrize("preview", [False, True])
def test_a_dng_is_read_back_by_libraw_and_signs_like_its_jpeg(tmp_path, preview):
    dng = write_dng(tmp_path / "IMG_1.DNG", photo(11), preview=preview)
    photo(11).save(tmp_path / "IMG_1.JPG", quality=92)
    raw, jpeg = analyze(str(dng)), analyze(str(tmp_path / "IMG_1.JPG"))
    assert (raw.format, raw.width, raw.height) == ("DNG", 640, 480)
    assert distance(raw.signature, jpeg.signature) < 0.15
    other = analyze(str(save_photo(tmp_path / "other.jpg", 12, (640, 480))))
    assert distance(raw.signature, other.signature) > 0.4


def test_a_raw_is_turned_by_its_orientation(tmp_path):
    raw = analyze(str(write_dng(tmp_path / "turned.dng", photo(13), orientation=6)))
    turned = tmp_path / "turned.jpg"
    photo(13).rotate(-90, expand=True).save(turned, quality=92)
    assert (raw.width, raw.height) == (480, 640)
    assert distance(raw.signature, analyze(str(turned)).signature) < 0.15


@pytest.mark.parametrize("name", ["broken.NEF", "broken.cr3", "empty.dng"])
def test_a_corrupt_raw_is_one_line(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else b"II*\x00" + os.urandom(3000))
    with pytest.raises(ImageError) as caught:
        analyze(str(path))
    assert "\n" not in str(caught.value) and str(caught.value)


@pytest.mark.parametrize("fmt, ext", [("AVIF", ".avif"), ("JXL", ".jxl")])
def test_avif_and_jpeg_xl_are_analysed(tmp_path, fmt, ext):
    path = tmp_path / f"a{ext}"
    photo(14, (400, 300)).save(path, fmt, quality=80)
    photo(14, (400, 300)).save(tmp_path / "a.png")
    found = analyze(str(path))
    assert (found.width, found.height) == (400, 300)
    assert distance(found.signature, analyze(str(tmp_path / "a.png")).signature) < 0.15


# --------------------------------------------------------------------------------------------
# units, from a folder's names


def test_units_hold_raw_rendition_sidecars_and_video():
    names = ["IMG_1.NEF", "IMG_1.JPG", "IMG_1.xmp", "IMG_1.JPG.xmp", "IMG_2.HEIC", "IMG_2.MOV", "IMG_2.MOV.json",
             "IMG_2.AAE", "IMG_O2.AAE", "f.jpg", "f_01.jpg.xmp", "album.json", "notes.xmp"]
    found = {u.lead: u for u in bundles.units(names, EXTS)}
    assert found["IMG_1.JPG"].images == ("IMG_1.JPG", "IMG_1.NEF")
    assert found["IMG_1.JPG"].companions == ("IMG_1.JPG.xmp", "IMG_1.xmp")
    assert found["IMG_2.HEIC"].companions == ("IMG_2.AAE", "IMG_2.MOV", "IMG_2.MOV.json", "IMG_O2.AAE")
    assert found["f.jpg"].companions == ("f_01.jpg.xmp",)
    assert set(found) == {"IMG_1.JPG", "IMG_2.HEIC", "f.jpg"}  # album.json and notes.xmp belong to no image


def test_a_raw_and_an_unrelated_picture_of_the_same_name_stay_apart():
    found = bundles.units(["IMG_5.DNG", "IMG_5.JPG", "IMG_5.xmp"], EXTS, paired=lambda raw, other: False)
    assert sorted(u.images for u in found) == [("IMG_5.DNG",), ("IMG_5.JPG",)]
    assert all(u.companions == () and u.shared == ("IMG_5.xmp",) for u in found), "a stem's sidecar stays with both"


@pytest.mark.parametrize("sidecar", [
    "a.jpg.json", "a.JPG.supplemental-metadata.json", "a.jpg.supplemental-metad.json", "a.jpg.xmp", "A.XMP", "a.json",
])
def test_sidecar_name_variants_go_with_their_image(sidecar):
    assert bundles.companions(["a.jpg", sidecar, "b.jpg"], ["a.jpg"], EXTS) == [sidecar]


@pytest.mark.parametrize("image, sidecar", [
    ("a(1).jpg", "a.jpg(1).json"), ("a(1).jpg", "a.jpg.supplemental-metadata(1).json"),
])
def test_takeout_numbered_copies_find_their_json(image, sidecar):
    names = ["a.jpg", "a.jpg.json", image, sidecar]
    assert bundles.companions(names, [image], EXTS) == [sidecar]
    assert bundles.companions(names, ["a.jpg"], EXTS) == ["a.jpg.json"]


def test_a_stem_sidecar_leaves_with_the_last_image_of_its_stem():
    names = ["a.jpg", "a.png", "a.xmp", "a.MOV"]
    assert bundles.companions(names, ["a.png"], EXTS) == []
    assert bundles.companions(names, ["a.png", "a.jpg"], EXTS) == ["a.MOV", "a.xmp"]


# --------------------------------------------------------------------------------------------
# metadata


def test_metadata_is_read_from_exif_xmp_sidecars_and_takeout(tmp_path):
    image = save_photo(tmp_path / "a.jpg", 1)
    (tmp_path / "a.jpg.json").write_text(json.dumps({
        "photoTakenTime": {"timestamp": "1563127391"}, "geoData": {"latitude": 48.8584, "longitude": 2.2945},
        "description": "at the tower"}))
    meta.write_sidecar(tmp_path / "a.jpg.xmp", meta.Metadata(keywords=("paris",), rating=4, title="Evening"))
    found = meta.read(image, [tmp_path / "a.jpg.xmp", tmp_path / "a.jpg.json"])
    assert found.gps == (48.8584, 2.2945) and found.date == "2019-07-14T18:03:11Z"
    assert (found.keywords, found.rating, found.title, found.description) == (("paris",), 4, "Evening", "at the tower")
    assert meta.read(image) == meta.Metadata()


def test_a_sidecar_keeps_its_own_values_when_merged_into(tmp_path):
    sidecar = tmp_path / "k.jpg.xmp"
    meta.write_sidecar(sidecar, meta.Metadata(title="mine", keywords=("a",)))
    meta.write_sidecar(sidecar, meta.Metadata(title="theirs", keywords=("b",), rating=2))
    found = meta.read(tmp_path / "missing.jpg", [sidecar])
    assert (found.title, found.keywords, found.rating) == ("mine", ("a", "b"), 2)
    assert "<rdf:Bag>" in sidecar.read_text() and "<rdf:Seq>" not in sidecar.read_text(), "dc:subject is a Bag"


# --------------------------------------------------------------------------------------------
# a whole library, through the command


def _library(root: Path) -> dict[str, Path]:
    """Camera RAW+JPEG with a sidecar and an exported copy elsewhere; a Live Photo and a
    Takeout backup of it; a lone JPEG with its video as the worse copy of a RAW unit; a
    RAW+JPEG of the same name showing different photos; a corrupt RAW."""
    f: dict[str, Path] = {}
    big = (640, 480)
    f["raw1"] = write_dng(root / "camera" / "IMG_1.DNG", photo(21, big), preview=True)
    f["jpg1"] = save_photo(root / "camera" / "IMG_1.JPG", 21, big)
    f["xmp1"] = root / "camera" / "IMG_1.xmp"
    meta.write_sidecar(f["xmp1"], meta.Metadata(rating=5))
    f["export1"] = save_photo(root / "export" / "IMG_1-edit.jpg", 21, (800, 600))
    f["live2"] = save_photo(root / "phone" / "IMG_2.JPG", 22, big)
    f["mov2"] = root / "phone" / "IMG_2.MOV"
    f["mov2"].write_bytes(b"\x00\x00\x00\x18ftypqt  " + os.urandom(2000))
    f["aae2"] = root / "phone" / "IMG_2.AAE"
    f["aae2"].write_text("<plist/>")
    f["backup2"] = save_photo(root / "backup" / "IMG_2.JPG", 22, (320, 240))
    f["json2"] = root / "backup" / "IMG_2.JPG.supplemental-metadata.json"
    f["json2"].write_text(json.dumps({"geoData": {"latitude": 52.52, "longitude": 13.405}, "description": "Berlin"}))
    f["raw3"] = write_dng(root / "best" / "IMG_3.DNG", photo(23, big))
    f["jpg3"] = save_photo(root / "best" / "IMG_3.JPG", 23, big)
    f["dup3"] = save_photo(root / "dup" / "IMG_3.JPG", 23, (800, 600))
    f["mov3"] = root / "dup" / "IMG_3.MOV"
    f["mov3"].write_bytes(os.urandom(1500))
    f["xmp3"] = root / "dup" / "IMG_3.JPG.xmp"
    meta.write_sidecar(f["xmp3"], meta.Metadata(keywords=("holiday",)))
    f["raw5"] = write_dng(root / "camera" / "IMG_5.DNG", photo(25, big))
    f["jpg5"] = save_photo(root / "camera" / "IMG_5.JPG", 26, big)
    f["bad"] = root / "camera" / "IMG_9.NEF"
    f["bad"].write_bytes(b"II*\x00" + os.urandom(5000))
    return f


def _group(report: dict, keep: Path) -> dict:
    [found] = [g for g in report["groups"] if g["keep"] == str(keep)]
    return found


def test_a_library_of_units_is_planned_kept_and_moved_whole_and_undone(run_cli, tmp_path, monkeypatch):
    root, target = tmp_path / "lib", tmp_path / "dups"
    f = _library(root)
    before = tree_state(root)

    dry = run_cli("deduplicate", root)
    assert dry.code == 0, dry.err
    report = dry.report
    groups = {g["keep"]: sorted(g["remove"]) for g in report["groups"]}
    # the RAW unit is kept, by its JPEG (its lead), never grouped against its own RAW
    assert groups == {str(f["jpg1"]): [str(f["export1"])], str(f["live2"]): [str(f["backup2"])],
                      str(f["jpg3"]): [str(f["dup3"])]}
    one = _group(report, f["jpg1"])
    assert one["rule"] == "with_raw" and one["why"] == "it comes with its RAW file"
    kept_members = {m["path"]: m["kind"] for m in one["files"][str(f["jpg1"])]["members"]}
    assert kept_members == {str(f["raw1"]): "image", str(f["xmp1"]): "sidecar"}
    two = _group(report, f["live2"])
    assert two["why"] == "it comes with its Live Photo video"
    assert two["metadata"] == {str(f["backup2"]): {"gps": "52.52000, 13.40500", "description": "Berlin"}}
    three = _group(report, f["jpg3"])
    assert three["metadata"] == {str(f["dup3"]): {"keywords": "holiday"}}
    assert [p["path"] for p in report["problems"]] == [str(f["bad"])]
    assert "\n" not in report["problems"][0]["reason"]
    assert tree_state(root) == before, "a dry run changes nothing"

    monkeypatch.setenv("IMAGE_DEDUP_MERGE_METADATA", "xmp")
    real = run_cli("deduplicate", root, "--no-dry-run", "--target", target)
    assert real.code == 0, real.err
    gone = {p for p in before if not os.path.lexists(p)}
    assert gone == {str(f[k]) for k in ("export1", "backup2", "json2", "dup3", "mov3", "xmp3")}
    moved = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert moved == {"lib/export/IMG_1-edit.jpg", "lib/backup/IMG_2.JPG",
                     "lib/backup/IMG_2.JPG.supplemental-metadata.json",
                     "lib/dup/IMG_3.JPG", "lib/dup/IMG_3.MOV", "lib/dup/IMG_3.JPG.xmp"}
    # what only the removed copies held is in a sidecar of the kept file, never in the image
    assert meta.read(f["live2"], [f["live2"].with_name("IMG_2.JPG.xmp")]).gps == (52.52, 13.405)
    assert meta.read(f["jpg3"], [f["jpg3"].with_name("IMG_3.JPG.xmp")]).keywords == ("holiday",)
    assert tree_state(root)[str(f["live2"])] == before[str(f["live2"])]
    _no_orphans(root)

    [journal] = (Path(os.environ["XDG_DATA_HOME"]) / "image-dedup" / "journals").glob("*.jsonl")
    entries = [json.loads(line) for line in journal.read_text().splitlines()]
    units = [e for e in entries if e["state"] == "intent" and e["action"] == "move"]
    assert sorted(len(e["files"]) for e in units) == [1, 2, 3], "one journal entry per unit, every file in it"
    assert run_cli("undo", journal).code == 0
    assert tree_state(root) == {p: s for p, s in before.items()}
    assert not any(p.is_file() for p in target.rglob("*"))


def _no_orphans(root: Path) -> None:
    """Every sidecar and video below ``root`` still has its image beside it."""
    for folder, _, names in os.walk(root):
        listing = bundles.Listing(names, EXTS)
        owned = {c for u in listing.units() for c in u.companions + u.shared}
        loose = [n for n in names if bundles.is_companion_name(n) and n not in owned]
        assert not loose, f"orphaned in {folder}: {loose}"


def test_a_copy_of_a_reference_file_is_removed_in_its_favour_and_the_reference_never(run_cli, tmp_path):
    root, archive, target = tmp_path / "lib", tmp_path / "archive", tmp_path / "dups"
    ref = save_photo(archive / "2019" / "beach.jpg", 31, (320, 240))
    twin = save_photo(archive / "2019" / "beach-small.jpg", 31, (200, 150))
    copy = save_photo(root / "new" / "beach.jpg", 31, (640, 480))  # bigger: it would win otherwise
    before = tree_state(archive)
    result = run_cli("deduplicate", root, "--reference", archive, "--no-dry-run", "--target", target)
    assert result.code == 0, result.err
    [group] = result.report["groups"]
    assert group["keep"] in (str(ref), str(twin)) and group["remove"] == [str(copy)]
    assert group["why"] == "it lies in a reference folder"
    assert tree_state(archive) == before and not copy.exists()


def test_an_edited_report_cannot_remove_from_a_reference_folder(run_cli, tmp_path):
    root, archive = tmp_path / "lib", tmp_path / "lib" / "archive"
    ref = save_photo(archive / "a.jpg", 32)
    copy = save_photo(root / "a copy.jpg", 32)
    result = run_cli("deduplicate", root, "--reference", archive)
    [group] = result.report["groups"]
    assert group["keep"] == str(ref)
    group["keep"], group["remove"] = str(copy), [str(ref)]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(result.report))
    applied = run_cli("apply", edited, root, "--reference", archive, "--no-dry-run", "--store", tmp_path / "store.sqlite")
    assert applied.code == 0 and ref.exists()
    assert "reference folder" in applied.out


# --------------------------------------------------------------------------------------------
# one action per unit: journal, failure part-way, a run killed part-way, undo


def _unit(folder: Path) -> list[Path]:
    files = [folder / "IMG_7.JPG", folder / "IMG_7.DNG", folder / "IMG_7.xmp"]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(f"file {i}".encode() * 100)
    return files


def test_a_unit_that_cannot_move_whole_is_put_back(tmp_path, monkeypatch):
    files = _unit(tmp_path / "lib")
    before = tree_state(tmp_path / "lib")
    journal = actions.Journal(tmp_path / "j" / "run.jsonl")
    real_move, calls = actions.move_file, []

    def failing(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_move(src, dst)

    monkeypatch.setattr(actions, "move_file", failing)
    steps = [actions.Step(f, target=tmp_path / "t" / f.name) for f in files]
    with pytest.raises(OSError):
        actions.act_on_unit("move", steps, tmp_path / "keep.jpg", journal, 0.1)
    monkeypatch.undo()
    journal.close()
    assert tree_state(tmp_path / "lib") == before, "never half a unit"
    assert actions.undo(journal.path) == [actions.Undone(f"not done, nothing to undo: {files[0]} (rolled back by a later run)")]


def _half_moved(tmp_path: Path, moved: int) -> tuple[list[Path], Path]:
    """A unit whose action was journaled and killed after ``moved`` of its files went."""
    files = _unit(tmp_path / "lib")
    journal = actions.Journal(tmp_path / "j" / "killed.jsonl")
    planned = [{"path": str(f), "target": str(tmp_path / "t" / f.name), "size": f.stat().st_size,
                "mtime_ns": f.stat().st_mtime_ns} for f in files]
    journal.write(state="intent", action="move", path=str(files[0]), keep="/k.jpg", target=planned[0]["target"],
                  size=planned[0]["size"], mtime_ns=planned[0]["mtime_ns"], files=planned)
    for f in files[:moved]:
        actions.move_file(f, tmp_path / "t" / f.name)
    journal.close()  # the process died: its lock is gone with it
    return files, journal.path


def test_the_next_run_rolls_back_a_half_moved_unit(tmp_path):
    files, journal = _half_moved(tmp_path, 2)
    [line] = actions.recover(journal.parent)
    assert line.startswith("rolled back: 2 of the 3 files")
    assert all(f.exists() for f in files) and not any((tmp_path / "t").iterdir())
    assert actions.recover(journal.parent) == [], "settled once"
    assert actions.undo(journal)[0].text.startswith("not done, nothing to undo")


def test_the_next_run_confirms_a_unit_that_had_all_gone_and_undo_brings_it_back(tmp_path):
    files, journal = _half_moved(tmp_path, 3)
    [line] = actions.recover(journal.parent)
    assert line.startswith("finished")
    assert not any(f.exists() for f in files)
    assert all(line.text.startswith("restored") for line in actions.undo(journal))
    assert all(f.exists() for f in files)


def test_a_removal_taken_over_by_another_actuator_is_not_claimed_by_the_dead_ones_journal(tmp_path):
    """An actuator killed after its intent, before it moved anything; the decision, delivered
    again, is carried out by another one. The dead journal's intent settles as not done (the
    files are gone, but not by it), so the unit is removed once in the journals and undone once."""
    files, dead = _half_moved(tmp_path, 0)
    keep = tmp_path / "keep.jpg"
    other = actions.Journal(tmp_path / "j" / "other.jsonl")
    actions.act_on_unit("move", [actions.Step(f, target=tmp_path / "t" / f.name) for f in files], keep, other, 0.1)
    other.close()
    [line] = actions.recover(dead.parent)
    assert line == f"not done, taken over by a later action: {files[0]}"
    assert not any(f.exists() for f in files), "the files are the other action's: left where it put them"
    assert actions.undo(dead)[0].text.startswith("not done, nothing to undo")
    assert all(u.text.startswith("restored") for u in actions.undo(other.path))
    assert all(f.exists() for f in files)


def test_a_live_runs_journal_is_left_alone(tmp_path):
    files = _unit(tmp_path / "lib")
    live = actions.Journal(tmp_path / "j" / "live.jsonl")
    live.write(state="intent", action="move", path=str(files[0]), keep="/k.jpg", target=str(tmp_path / "t" / "x"),
               files=[{"path": str(files[0]), "target": str(tmp_path / "t" / "x")}])
    actions.move_file(files[0], tmp_path / "t" / "x")  # in progress in another process
    assert actions.recover(live.path.parent) == []
    assert not files[0].exists()
    live.close()


@pytest.mark.parametrize("existed", [False, True])
def test_a_metadata_merge_is_journaled_and_undone(tmp_path, existed):
    sidecar = tmp_path / "k.jpg.xmp"
    if existed:
        meta.write_sidecar(sidecar, meta.Metadata(title="own"))
    before = sidecar.read_bytes() if existed else None
    journal = actions.Journal(tmp_path / "j.jsonl")
    actions.journaled_write(journal, sidecar, tmp_path / "k.jpg",
                            lambda p: meta.write_sidecar(p, meta.Metadata(gps=(1.5, -2.25), rating=3)))
    journal.close()
    assert meta.read(tmp_path / "k.jpg", [sidecar]).gps == (1.5, -2.25)
    [line] = actions.undo(journal.path)
    assert (sidecar.read_bytes() == before) if existed else not sidecar.exists(), line


def test_the_review_page_shows_a_raw_and_what_only_a_removed_copy_holds(run_cli, tmp_path):
    from services.review.state import Review
    from services.review.thumbs import render

    root = tmp_path / "lib"
    f = _library(root)
    report = run_cli("deduplicate", root).report
    review = Review(report)
    views = {v["files"][0]["name"]: v for v in (review.view(g) for g in review.groups)}
    one = views["IMG_1.JPG"]
    assert one["why"] == "it comes with its RAW file"
    assert one["files"][0]["members"] == ["IMG_1.DNG", "IMG_1.xmp"]
    two = views["IMG_2.JPG"]
    assert two["files"][1]["metadata"] == {"gps": "52.52000, 13.40500", "description": "Berlin"}
    thumb = tmp_path / "raw.jpg"
    render(str(f["raw1"]), str(thumb), 256)
    with Image.open(thumb) as img:
        assert img.size == (256, 192)


@pytest.mark.parametrize("action", ["move", "trash", "delete", "hardlink"])
def test_a_card_imported_twice_loses_one_whole_unit_whatever_the_action(run_cli, tmp_path, action):
    """camera/ and backup/ hold the same RAW+JPEG with its sidecar: one unit goes, whole (a
    hard link replaces each image by the kept one of its format, the sidecar staying beside
    it); undo brings back what can come back."""
    root, target = tmp_path / "lib", tmp_path / "dups"
    files = {}
    for folder in ("camera", "backup"):
        files[folder] = [write_dng(root / folder / "IMG_4.DNG", photo(44), preview=True),
                         save_photo(root / folder / "IMG_4.JPG", 44, (640, 480)),
                         root / folder / "IMG_4.JPG.xmp"]
        meta.write_sidecar(files[folder][2], meta.Metadata(rating=3))
    before = tree_state(root)
    extra = ["--target", target] if action == "move" else ["--action", action]
    result = run_cli("deduplicate", root, "--no-dry-run", *extra)
    assert result.code == 0, result.err
    [group] = result.report["groups"]
    kept = "camera" if group["keep"].startswith(str(root / "camera")) else "backup"
    gone = "backup" if kept == "camera" else "camera"
    [outcome] = group["outcomes"].values()
    assert outcome["status"] == "done", outcome
    assert all(p.exists() for p in files[kept])
    if action == "hardlink":
        assert sorted(outcome["files"]) == sorted(map(str, files[gone][:2]))
        assert all(a.samefile(b) for a, b in zip(files[gone][:2], files[kept][:2]))
        assert files[gone][2].exists(), "the sidecar stays beside its image"
    else:
        assert sorted(outcome["files"]) == sorted(map(str, files[gone]))
        assert not any(p.exists() for p in files[gone]), "the whole unit went"
    if action == "delete":
        return
    [journal] = (Path(os.environ["XDG_DATA_HOME"]) / "image-dedup" / "journals").glob("*.jsonl")
    if action == "trash":
        trash = Path(os.environ["XDG_DATA_HOME"]) / "Trash" / "files"
        assert sorted(p.name for p in trash.iterdir()) == ["IMG_4.DNG", "IMG_4.JPG", "IMG_4.JPG.xmp"]
    assert run_cli("undo", journal).code == 0
    after = tree_state(root)
    assert {p: s[:2] for p, s in after.items()} == {p: s[:2] for p, s in before.items()}, "every byte is back"


@pytest.mark.parametrize("raw_asked_for", [True, False])
def test_a_jpeg_whose_raw_cannot_be_read_is_never_separated_from_it(run_cli, tmp_path, raw_asked_for):
    """IMG_6.NEF beside IMG_6.JPG cannot be compared with it (corrupt, or not among the
    file_extensions): the JPEG is not removed for a bigger copy elsewhere, so the two stay
    together; the corrupt RAW is a one-line problem."""
    root = tmp_path / "lib"
    jpeg = save_photo(root / "camera" / "IMG_6.JPG", 27, (320, 240))
    raw = root / "camera" / "IMG_6.NEF"
    raw.write_bytes(b"II*\x00" + os.urandom(4000))
    bigger = save_photo(root / "export" / "IMG_6 big.jpg", 27, (640, 480))
    extra = [] if raw_asked_for else ["--config", _config(tmp_path, file_extensions=[".jpg"])]
    result = run_cli("deduplicate", root, "--no-dry-run", "--action", "delete", *extra)
    assert result.code == 0, result.err
    assert result.report["groups"] == [] and jpeg.exists() and raw.exists() and bigger.exists()
    assert [p["path"] for p in result.report["problems"]] == ([str(raw)] if raw_asked_for else [])


def _config(tmp_path: Path, **options) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(options))  # JSON is YAML
    return path


def test_a_sidecar_written_after_the_plan_goes_with_its_image(run_cli, tmp_path):
    """The actuator reads the folder when it acts: a sidecar and a video that appeared between
    the report and its application are moved with their image, under its new name."""
    root, target = tmp_path / "lib", tmp_path / "dups"
    save_photo(root / "a" / "IMG_8.JPG", 48, (640, 480))
    copy = save_photo(root / "b" / "IMG_8.JPG", 48, (320, 240))
    taken = save_photo(target / "lib" / "b" / "IMG_8.JPG", 49)  # the name is taken in the target
    report = run_cli("deduplicate", root).report
    assert report["groups"][0]["remove"] == [str(copy)]
    (root / "b" / "IMG_8.JPG.xmp").write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    (root / "b" / "IMG_8.MOV").write_bytes(os.urandom(500))
    saved = tmp_path / "r.json"
    saved.write_text(json.dumps(report))
    applied = run_cli("apply", saved, root, "--no-dry-run", "--target", target, "--store", tmp_path / "store.sqlite")
    assert applied.code == 0, applied.err
    assert sorted(p.name for p in (root / "b").iterdir()) == []
    assert sorted(p.name for p in taken.parent.iterdir()) == [
        "IMG_8 (1).JPG", "IMG_8 (1).JPG.xmp", "IMG_8 (1).MOV", "IMG_8.JPG"]
