"""Which files of a folder belong to one capture: pure functions of a folder's file names.

A *unit* is what is matched, kept or removed as one:

* its images: one image, or a camera RAW with the JPEG or HEIC the camera wrote beside it
  (same folder, same name but for the extension) when the verdict says they show the same
  photo (``paired``; a RAW and an unrelated picture that happen to share a name stay apart);
* its companions, which travel with it: sidecars (``X.xmp``, ``X.JPG.xmp``, darktable's
  ``X_01.JPG.xmp``, Apple's ``X.AAE`` and ``X_O1234.AAE``, Google Takeout's ``X.JPG.json``,
  ``X.JPG.supplemental-metadata.json`` and its shortened and ``(1)`` forms) and a Live Photo's
  video (``X.MOV`` or ``X.MP4`` beside ``X.HEIC``).

A companion named for one file (``X.JPG.xmp``) goes with that file. One named for the stem
(``X.xmp``, ``X.AAE``, ``X.MOV``) belongs to every image of that stem, so it leaves with the
last of them: while ``X.JPG`` stays, ``X.PNG`` leaves alone. Names compare without regard to
case (cameras write ``IMG_1234.JPG``, tools ``IMG_1234.jpg.xmp``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

#: Camera RAW formats, by file name ending (LibRaw reads many more; these are the common ones).
RAW_EXTENSIONS = frozenset({
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2",
    ".rwl", ".pef", ".srw", ".3fr", ".erf", ".kdc", ".mrw", ".iiq", ".x3f",
})
VIDEO_EXTENSIONS = frozenset({".mov", ".mp4", ".m4v"})
SIDECAR_EXTENSIONS = frozenset({".xmp", ".aae", ".json"})
#: Sidecars that hold a person's edits (Lightroom, darktable, digiKam, Apple Photos). Takeout's
#: JSON does not count: a Takeout backup has one for every file, and a "storage saver" copy
#: with one must not win over the full-size original for it (its metadata is merged instead).
EDIT_SIDECARS = frozenset({".xmp", ".aae"})
#: The camera's own renditions of a RAW, preferred as the unit's lead in this order.
RENDITION_ORDER = (".jpg", ".jpeg", ".heic", ".heif", ".hif", ".avif", ".jxl", ".tif", ".tiff", ".png", ".webp")

_TAKEOUT_SUFFIX = "supplemental-metadata"
_DARKTABLE_VERSION = re.compile(r"^(.*)_(\d{2,})(\.[^.]+)$")  # X_01.JPG (.xmp) is a version of X.JPG
_APPLE_ORIGINAL = re.compile(r"^(.*_)O(\d+)$", re.IGNORECASE)  # IMG_O1234.AAE: IMG_1234's original
_COPY_NUMBER = re.compile(r"^(.*?)(\(\d+\))$")  # Takeout: X(1).JPG has X.JPG(1).json


def _split(name: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(name)
    return stem.casefold(), ext.casefold()


def unit_extensions(configured: Iterable[str]) -> set[str]:
    """The endings of a unit's images: the configured ones and every RAW's, analysed or not,
    so that a RAW is never left without its JPEG, nor its sidecar without it."""
    return {e.casefold() for e in configured} | RAW_EXTENSIONS


def is_companion_name(name: str) -> bool:
    """Could this file be a sidecar or a Live Photo video (its folder decides)?"""
    return _split(name)[1] in SIDECAR_EXTENSIONS | VIDEO_EXTENSIONS


@dataclass(frozen=True, slots=True)
class Unit:
    """File names in one folder: ``images`` (the lead first: what is analysed and compared for
    the unit), ``companions`` that go with it, ``shared`` stem companions that stay with
    another image of the same stem."""

    images: tuple[str, ...]
    companions: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()

    @property
    def lead(self) -> str:
        return self.images[0]

    @property
    def files(self) -> tuple[str, ...]:
        return self.images + self.companions

    @property
    def has_raw(self) -> bool:
        return any(_split(n)[1] in RAW_EXTENSIONS for n in self.images)

    @property
    def has_video(self) -> bool:
        return any(_split(n)[1] in VIDEO_EXTENSIONS for n in self.companions + self.shared)

    @property
    def has_sidecar(self) -> bool:
        return any(_split(n)[1] in EDIT_SIDECARS for n in self.companions + self.shared)


class Listing:
    """A folder's names, indexed once for the look-ups below (a folder may hold thousands)."""

    def __init__(self, names: Iterable[str], image_extensions: Collection[str]):
        self.names = list(dict.fromkeys(names))
        exts = {e.casefold() for e in image_extensions}
        self.by_key = {n.casefold(): n for n in self.names}
        self.images = [n for n in self.names if _split(n)[1] in exts]
        self.by_stem: dict[str, list[str]] = {}
        for name in self.images:
            self.by_stem.setdefault(_split(name)[0], []).append(name)
        image_stems = set(self.by_stem)
        self.owner: dict[str, str] = {}  # companion -> the file it belongs to
        self.stem_of: dict[str, str] = {}  # companion -> the stem it belongs to
        for name in self.names:
            stem, ext = _split(name)
            if ext in VIDEO_EXTENSIONS and stem in image_stems and name not in self.images:
                self.stem_of[name] = stem
            elif ext in SIDECAR_EXTENSIONS:
                self._sidecar(name, stem, ext, image_stems)
        self.of_stem: dict[str, list[str]] = {}
        for name, stem in self.stem_of.items():
            self.of_stem.setdefault(stem, []).append(name)
        self.of_file: dict[str, list[str]] = {}
        for name, owner in self.owner.items():
            self.of_file.setdefault(owner, []).append(name)

    def _sidecar(self, name: str, stem: str, ext: str, image_stems: set[str]) -> None:
        base = stem  # the name without .xmp / .aae / .json, casefolded
        if ext == ".json":
            numbered = _COPY_NUMBER.match(base)
            if numbered:  # X.JPG(1).json or X.JPG.supplemental-metadata(1).json: X(1).JPG
                inner, number = numbered.groups()
                head, dot, tail = inner.rpartition(".")
                if dot and tail and _TAKEOUT_SUFFIX.startswith(tail) and "." in head:
                    inner = head
                s, e = os.path.splitext(inner)
                if self._file(s + number + e):
                    base = s + number + e
            else:  # X.JPG.supplemental-metadata.json, or shortened by Takeout
                head, dot, tail = base.rpartition(".")
                if not self._file(base) and dot and tail and _TAKEOUT_SUFFIX.startswith(tail) and self._file(head):
                    base = head
        owner = self._file(base)
        if owner is None and ext == ".xmp":
            version = _DARKTABLE_VERSION.match(base)
            if version:
                owner = self._file(version.group(1) + version.group(3))
        if owner is not None:
            self.owner[name] = owner
            return
        if ext == ".aae":
            original = _APPLE_ORIGINAL.match(base)
            if original and (original.group(1) + original.group(2)).casefold() in image_stems:
                base = (original.group(1) + original.group(2)).casefold()
        if base in image_stems:
            self.stem_of[name] = base

    def _file(self, key: str) -> str | None:
        """The folder's file of this (casefolded) name that is not itself a sidecar."""
        found = self.by_key.get(key)
        return found if found is not None and _split(found)[1] not in SIDECAR_EXTENSIONS else None

    def companions(self, leaving: Collection[str]) -> tuple[list[str], list[str]]:
        """(the companions that go with the files ``leaving``, the stem companions that stay
        because another image of their stem stays)."""
        leaving_stems = {_split(n)[0] for n in leaving if _split(n)[0] in self.by_stem}
        going: list[str] = []
        shared: list[str] = []
        for stem in leaving_stems:
            stays = any(n not in leaving for n in self.by_stem[stem])
            for name in self.of_stem.get(stem, ()):
                if name not in leaving:
                    (shared if stays else going).append(name)
        todo = list(leaving) + going
        while todo:  # each file's own sidecars go with it (a video's too)
            for name in self.of_file.get(todo.pop(), ()):
                if name not in leaving and name not in going:
                    going.append(name)
                    todo.append(name)
        return sorted(going), sorted(shared)

    def units(self, paired: Callable[[str, str], bool] = lambda raw, other: True,
              names: Collection[str] | None = None) -> list[Unit]:
        """The units of the folder, or only those of the stems of ``names``. ``paired(raw,
        rendition)`` is the verdict on a RAW and an image of the same stem (only asked for such
        pairs); a rendition joins the first RAW it is paired with. Two RAWs of one stem (a CR2
        and the DNG made from it) are never one unit: one is a copy of the other."""
        stems = self.by_stem.keys() if names is None else {_split(n)[0] for n in names} & self.by_stem.keys()
        found: list[Unit] = []
        for stem in sorted(stems):
            images = sorted(self.by_stem[stem], key=_rendition_rank)
            raws = [n for n in images if _split(n)[1] in RAW_EXTENSIONS]
            others = [n for n in images if n not in raws]
            groups: list[list[str]] = []
            for raw in raws:
                mine = [o for o in others if paired(raw, o)]
                others = [o for o in others if o not in mine]
                groups.append([*mine, raw])
            groups += [[o] for o in others]
            for group in groups:
                going, shared = self.companions(group)
                found.append(Unit(tuple(group), tuple(going), tuple(shared)))
        return found

    def same_stem_images(self, name: str) -> list[str]:
        """The other images of ``name``'s stem (those it may form a unit with)."""
        return [n for n in self.by_stem.get(_split(name)[0], ()) if n != name]


def companions(names: Iterable[str], leaving: Collection[str], image_extensions: Collection[str]) -> list[str]:
    """The sidecars and videos in a folder of ``names`` that must leave it together with the
    files ``leaving`` (names in the same folder), so that none is left without its image."""
    return Listing(names, image_extensions).companions(leaving)[0]


def units(
    names: Iterable[str], image_extensions: Collection[str], paired: Callable[[str, str], bool] = lambda raw, other: True
) -> list[Unit]:
    """The units of a folder of ``names`` (``Listing.units``)."""
    return Listing(names, image_extensions).units(paired)


def _rendition_rank(name: str) -> tuple:
    ext = _split(name)[1]
    return (ext in RAW_EXTENSIONS, RENDITION_ORDER.index(ext) if ext in RENDITION_ORDER else len(RENDITION_ORDER), name)


def renamed(name: str, old_stem: str, new_stem: str) -> str:
    """``name`` of a unit whose lead's stem changes from ``old_stem`` to ``new_stem`` (a move
    that found the names taken): every file of the unit keeps its place in the bundle."""
    if name[: len(old_stem)].casefold() == old_stem.casefold():
        return new_stem + name[len(old_stem):]
    return name


def stems_of(name: str) -> list[str]:
    """The image stems a companion's name may belong to, longest first (``a.b.JPG.xmp``:
    ``a.b.JPG``, ``a.b``, ``a``), for one that outlived its image."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def gone_key(folder: str, stem: str) -> str:
    """The ledger's key for the unit of ``stem`` in ``folder`` once it was removed: a companion
    that arrives after it follows it there (services mode)."""
    text = f"unit-gone\0{folder}\0{stem.casefold()}"
    return "gone-" + hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=20).hexdigest()
