"""The verdict (shared/core/verdict.py): each kind of copy it accepts and each kind of
look-alike it refuses, on generated pictures; its rules as a pure function; and that the
matcher and the actuator decide with this one function."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from services.actuator import handler as actuator
from services.matcher import handler as matcher
from shared.core import verdict
from shared.core.verdict import Thresholds, same_photo
from shared.image.compare import PATCH_SHIFT_PX, Agreement, phase_shifts
from shared.image.pixels import look_in_thread
from shared.image.signature import analyze
from shared.store import ImageRecord
from shared.store.comparisons import RememberingLook

from .conftest import make_photo, summary_rows

DEFAULTS = Thresholds(max_dist=0.40, min_similarity=0.35, min_agreement=0.85)


def record(path: Path) -> ImageRecord:
    a = analyze(str(path))
    st = path.stat()
    return ImageRecord(str(path), str(path.parent), st.st_size, st.st_mtime_ns, a.format, a.width, a.height,
                       signature=a.signature, digest=a.digest, frames=a.frames, embedding=a.embedding)


def judge(a: Path, b: Path):
    return asyncio.run(same_photo(record(a), record(b), DEFAULTS, look_in_thread))


@pytest.fixture
def photo(tmp_path) -> tuple[Path, Image.Image]:
    img = make_photo(5, (640, 480))
    path = tmp_path / "original.jpg"
    img.save(path, quality=95)
    return path, img


def _save(tmp_path: Path, name: str, img: Image.Image, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def _caption(img: Image.Image) -> Image.Image:
    bar = Image.new("RGB", (img.width, img.height + 60), "white")
    bar.paste(img, (0, 0))
    ImageDraw.Draw(bar).text((10, img.height + 20), "Holidays 2021 - shared from my phone", fill="black")
    return bar


COPIES = {
    "re-encoded": lambda img: img,
    "resized": lambda img: img.resize((320, 240), Image.LANCZOS),
    "brighter": lambda img: ImageEnhance.Brightness(img).enhance(1.2),
    "grey": lambda img: img.convert("L"),
    "cropped": lambda img: img.crop((64, 48, 576, 432)),
    "captioned": _caption,
    "turned": lambda img: img.transpose(Image.Transpose.ROTATE_90),
    "mirrored": lambda img: img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "straightened": lambda img: img.rotate(3, resample=Image.BICUBIC).crop((40, 30, 600, 450)),
}


@pytest.mark.parametrize("kind", sorted(COPIES))
def test_copies_are_the_same_photo(tmp_path, photo, kind):
    path, img = photo
    copy = _save(tmp_path, f"{kind}.jpg", COPIES[kind](img), quality=80)
    evidence = judge(path, copy)
    assert evidence.same, evidence
    assert evidence.stage in ("goldberg", "embedding") and evidence.score >= DEFAULTS.min_agreement
    assert judge(copy, path).same, "the verdict is symmetric"


def test_a_byte_identical_copy_is_exact(tmp_path, photo):
    path, _ = photo
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(path.read_bytes())
    evidence = judge(path, copy)
    assert (evidence.same, evidence.stage) == (True, "exact")


def test_two_frames_of_a_moving_scene_are_not(tmp_path):
    """The same background, and one subject that moved between the frames."""
    background = make_photo(9, (640, 480))
    frames = []
    for dx in (0, 14):
        frame = background.copy()
        subject = make_photo(10, (160, 160))
        frame.paste(subject, (240 + dx, 160))
        frames.append(_save(tmp_path, f"frame{dx}.jpg", frame, quality=92))
    evidence = judge(*frames)
    assert not evidence.same and evidence.reason, evidence


def test_an_edited_fake_with_something_faint_pasted_in_is_not(tmp_path):
    """An object blended into the middle of an otherwise faithful copy (as the kit's
    ela_modified, a penguin pasted in): those patches differ far more than the rest of the
    picture does, though not enough to be another picture's content by an absolute measure."""
    original = make_photo(5, (640, 480))
    fake = original.copy()
    box = (272, 192, 368, 288)
    fake.paste(Image.blend(original.crop(box), make_photo(6, (96, 96)), 0.35), box[:2])
    a = _save(tmp_path, "original.jpg", original, quality=95)
    b = _save(tmp_path, "fake.jpg", fake, quality=95)
    for evidence in (judge(a, b), judge(b, a)):
        assert not evidence.same and "other content" in evidence.reason, evidence


def test_an_object_pasted_onto_a_plain_area_is_not_a_copy(tmp_path):
    """Where the original is plain (sky, a wall) its patches have no texture to correlate;
    an object pasted there shows as texture that appeared from nothing."""
    original = make_photo(7, (640, 480))
    ImageDraw.Draw(original).rectangle((200, 150, 440, 330), fill=(150, 180, 220))
    fake = original.copy()
    fake.paste(make_photo(8, (110, 110)), (265, 185))
    a = _save(tmp_path, "original.jpg", original, quality=95)
    b = _save(tmp_path, "fake.jpg", fake, quality=95)
    for evidence in (judge(a, b), judge(b, a)):
        assert not evidence.same and "other content" in evidence.reason, evidence
    assert judge(a, _save(tmp_path, "copy.jpg", original.resize((480, 360)), quality=80)).same


def test_different_photos_are_not(tmp_path):
    a = _save(tmp_path, "a.jpg", make_photo(21, (640, 480)), quality=90)
    b = _save(tmp_path, "b.jpg", make_photo(22, (640, 480)), quality=90)
    assert not judge(a, b).same


@pytest.mark.parametrize("size", [(1, 1), (800, 600), (30000, 30)])
def test_flat_images_of_different_colours_never_match(tmp_path, size):
    white = _save(tmp_path, "white.png", Image.new("RGB", size, "white"))
    black = _save(tmp_path, "black.png", Image.new("RGB", size, "black"))
    red = _save(tmp_path, "red.png", Image.new("RGB", size, (200, 0, 0)))
    for a, b in ((white, black), (black, red), (white, red)):
        evidence = judge(a, b)
        assert not evidence.same and "too little structure" in evidence.reason


def test_an_animation_is_not_a_copy_of_its_first_frame(tmp_path):
    frames = [make_photo(s, (320, 240)) for s in (31, 32, 33)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    still = _save(tmp_path, "still.png", Image.open(gif).convert("RGB"))
    evidence = judge(still, gif)
    assert not evidence.same and "animation" in evidence.reason


@pytest.mark.parametrize("size", [44, 45, 48])
def test_phase_correlation_measures_sub_pixel_shifts_at_every_patch_size(size):
    """Phase correlation padded to an odd length (cv2.phaseCorrelate's own padding) reports
    identical patches as moved by half a pixel on each axis, which made a faithful copy's
    patches look displaced."""
    import cv2

    rng = np.random.default_rng(size)
    texture = cv2.GaussianBlur(rng.normal(0, 40, (200, 200)).astype(np.float32), (0, 0), 2)
    window = cv2.createHanningWindow((size, size), cv2.CV_32F)
    patches, moved = [], []
    for dx, dy in ((0.0, 0.0), (0.4, 0.0), (0.0, -1.5), (2.0, 1.0)):
        shifted = cv2.warpAffine(texture, np.float32([[1, 0, dx], [0, 1, dy]]), (200, 200), flags=cv2.INTER_CUBIC)
        patches.append(texture[60:60 + size, 60:60 + size])
        moved.append(shifted[60:60 + size, 60:60 + size])
    shifts, responses = phase_shifts(np.stack(patches), np.stack(moved), window)
    assert np.abs(shifts[0]).max() < 0.01, "identical patches did not move"
    # the estimate (the centroid of the peak, as OpenCV takes it) is rough, about half a pixel:
    # what the verdict relies on is which side of its threshold a shift is, and the direction of
    # the larger ones (neighbouring patches that moved together)
    (x2, y2), (x3, y3) = shifts[2:]
    assert -y2 > abs(x2) and x3 > y3 > 0, shifts
    lengths = np.hypot(*shifts.T)
    assert lengths[1] < PATCH_SHIFT_PX < lengths[3] and lengths[1] < lengths[2] < lengths[3], lengths
    assert np.all(responses > 0.5)


def test_the_batched_phase_correlation_measures_what_opencv_measures():
    """All patches of a comparison are correlated in one batched FFT; each shift and response
    is OpenCV's own (cv2.phaseCorrelate of the windowed patch padded to an even length)."""
    import cv2

    rng = np.random.default_rng(7)
    texture = cv2.GaussianBlur(rng.normal(0, 40, (300, 300)).astype(np.float32), (0, 0), 2)
    moved = cv2.warpAffine(texture, np.float32([[1, 0, 1.7], [0, 1, -0.6]]), (300, 300), flags=cv2.INTER_CUBIC)
    moved += rng.normal(0, 4, moved.shape).astype(np.float32)
    size = 44
    window = cv2.createHanningWindow((size, size), cv2.CV_32F)
    corners = rng.integers(10, 240, (12, 2))
    a = np.stack([texture[y:y + size, x:x + size] for y, x in corners])
    b = np.stack([moved[y:y + size, x:x + size] for y, x in corners])
    shifts, responses = phase_shifts(a, b, window)
    pad = ((0, 4), (0, 4))  # 44 -> 48, the even fast length
    for k in range(len(a)):
        (dx, dy), response = cv2.phaseCorrelate(np.pad(a[k] * window, pad), np.pad(b[k] * window, pad))
        assert shifts[k] == pytest.approx((dx, dy), abs=2e-3) and responses[k] == pytest.approx(response, abs=2e-3)
    assert np.all(shifts[:, 0] > 1.0) and np.all(shifts[:, 1] < 0), "the shift was not found"


def _save_kinds(tmp_path: Path) -> list[Path]:
    photo = make_photo(12, (2400, 1800))
    paths = []
    for name, save in (
        ("big.jpg", lambda p: photo.save(p, quality=90)),
        ("turned.jpg", lambda p: photo.save(p, quality=90, exif=_orientation_exif(6))),
        ("cmyk.jpg", lambda p: photo.convert("CMYK").save(p, quality=90)),
        ("alpha.png", lambda p: photo.resize((900, 600)).convert("RGBA").save(p)),
        ("deep.png", lambda p: Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257)).save(p)),
    ):
        save(tmp_path / name)
        paths.append(tmp_path / name)
    return paths


def _orientation_exif(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_the_patches_own_shifts_refine_an_alignment_off_in_scale_and_turn():
    """Keypoints fit the turn and scale to a pixel or so, which leaves the corners of a copy
    (say one turned by 3 degrees and cropped) displaced; the patches' own shifts correct it."""
    import cv2

    from shared.image.compare import _Frame, _patches, _refined

    frame = np.asarray(make_photo(14, (512, 384)).convert("L"))
    off = cv2.getRotationMatrix2D((256, 192), 0.4, 1.006)  # the keypoints' fit, slightly wrong
    inside = np.ones(frame.shape, bool)

    def displacement(into):
        warped = cv2.warpAffine(frame, into, (512, 384), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        patches = _patches(_Frame(frame), warped, inside)
        return np.hypot(*patches.shifts.T), patches

    before, patches = displacement(off)
    assert before.max() > 2 * PATCH_SHIFT_PX, "the corners are displaced"
    after, _ = displacement(_refined(off, patches))
    assert np.median(after) < 0.2 and np.mean(after > PATCH_SHIFT_PX) < 0.05, after


def test_a_picture_kept_from_the_analysis_is_the_one_a_fresh_decode_gives(tmp_path):
    """Local mode compares the picture its analysis decoded; a fresh decode (another process,
    the actuator's last check) must see exactly the same pixels, or the verdict would depend
    on where it ran."""
    from shared.image.compare import MAX_SIDE
    from shared.image.signature import analyze_for_comparison, load_grey

    for path in _save_kinds(tmp_path):
        analysis, version, grey = analyze_for_comparison(str(path), MAX_SIDE)
        st = os.stat(path)
        assert version == (str(path), st.st_size, st.st_mtime_ns)
        assert np.array_equal(analysis.signature, analyze(str(path)).signature)
        assert np.array_equal(grey, load_grey(str(path), MAX_SIDE)), path.name
    assert load_grey(str(tmp_path / "turned.jpg"), MAX_SIDE).shape == (512, 384), "EXIF orientation honoured"


def test_a_file_analysed_in_local_mode_is_compared_without_decoding_it_again(tmp_path, monkeypatch):
    """The analysis hands back the comparison's picture; sent with the comparison, it spares
    the decoding in whichever worker compares, and that worker keeps it (with its keypoints)."""
    from shared.image import pixels

    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    photo = make_photo(13, (1600, 1200))
    photo.save(a, quality=92)
    photo.resize((800, 600)).save(b, quality=80)
    versions = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in (a, b)]
    monkeypatch.setattr(pixels, "_pictures", pixels.Pictures())
    fresh = pixels.compare_files(*versions, True)
    monkeypatch.setattr(pixels, "_pictures", pixels.Pictures())  # another worker
    analysed = [pixels.analyze_with_picture(str(p)) for p in (a, b)]
    assert [version for _, version, _ in analysed] == versions

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(pixels, "load_grey", no_decoding)
    sent = tuple(picture for _, _, picture in analysed)
    kept = pixels.compare_files(*versions, True, sent)
    assert kept == fresh and kept[0].convincing
    assert pixels.compare_files(*versions, True) == fresh, "the worker kept what it was sent"


def _decodes_of(signer) -> list[str]:
    """The paths ``signer``'s pool is asked to decode for a comparison, as they are asked."""
    from shared.image import pixels

    decoded: list[str] = []
    submit = signer._pool.submit

    def spied(fn, *args):
        if fn is pixels.picture:
            decoded.append(args[0][0])
        return submit(fn, *args)

    signer._pool.submit = spied
    return decoded


async def test_a_matcher_decodes_each_file_once_whichever_worker_compares_it(tmp_path):
    """The services' matcher has no analysis to take pictures from: each file is decoded once
    in the pool (the looks that want it meanwhile wait for that decode), kept, and sent with
    every comparison, whichever of the two workers makes it; the answers are a fresh decode's."""
    from services.hasher.handler import ProcessSigner
    from shared.image import pixels

    photo = make_photo(17, (1600, 1200))
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"]
    photo.save(paths[0], quality=92)
    photo.resize((800, 600)).save(paths[1], quality=80)
    photo.resize((1000, 750)).save(paths[2], quality=70)
    a, b, c = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]
    pairs = [(a, b), (a, c), (b, c), (c, a), (a, b)]
    signer = ProcessSigner(2)
    await signer.start()
    decoded = _decodes_of(signer)
    try:
        looks = await asyncio.gather(*(signer.look(x, y, True) for x, y in pairs))
    finally:
        signer.close()
    assert sorted(decoded) == sorted(str(p) for p in paths)
    assert looks == [pixels.compare_files(x, y, True) for x, y in pairs]
    assert all(first.convincing for first, _ in looks)


async def test_a_matcher_compares_the_pictures_a_hasher_left_without_decoding_the_files(tmp_path):
    """Services mode with ``pictures_directory``: a hasher's analysis leaves each file's picture
    there, a matcher's comparison takes it instead of decoding the file (the same answers as a
    fresh decode), and the pictures of the planned images are then dropped."""
    from services.hasher.handler import ProcessSigner
    from shared.image import pixels

    photo = make_photo(19, (1600, 1200))
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    photo.save(paths[0], quality=92)
    photo.resize((800, 600)).save(paths[1], quality=80)
    a, b = [(str(p), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths]
    shared = tmp_path / "pictures"
    hasher, matcher = ProcessSigner(1, shared=shared), ProcessSigner(1, shared=shared)
    await asyncio.gather(hasher.start(), matcher.start())
    decoded = _decodes_of(matcher)
    try:
        analyses = [await hasher(str(p)) for p in paths]
        assert len(list(shared.glob("*.grey"))) == 2
        look = await matcher.look(a, b, True)
    finally:
        hasher.close()
        matcher.close()
    assert decoded == [], "the files were decoded again"
    assert look == pixels.compare_files(a, b, True) and look[0].convincing
    assert [x.signature.tobytes() for x in analyses] == [analyze(str(p)).signature.tobytes() for p in paths]
    matcher.shared.drop([a[0], b[0]])
    assert list(shared.iterdir()) == []


def test_a_shared_picture_of_another_version_or_damaged_is_not_used(tmp_path):
    """A file changed since its picture was left (another size or time), or a picture cut
    short, reads as none: the matcher decodes the file then."""
    from shared.image.pixels import SharedPictures

    shared = SharedPictures(tmp_path / "pictures")
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    shared.put(("/photos/a.jpg", 10, 20), grey)
    assert np.array_equal(shared.get(("/photos/a.jpg", 10, 20)), grey)
    assert shared.get(("/photos/a.jpg", 10, 21)) is None and shared.get(("/photos/a.jpg", 11, 20)) is None
    assert shared.get(("/photos/b.jpg", 10, 20)) is None
    (left,) = shared.directory.iterdir()
    left.write_bytes(left.read_bytes()[:-1])
    assert shared.get(("/photos/a.jpg", 10, 20)) is None
    assert shared.prune() == 0, "a picture left now is not old"
    os.utime(left, (0, 0))
    assert shared.prune() == 1 and list(shared.directory.iterdir()) == []


def test_no_more_shared_pictures_wait_than_allowed(tmp_path):
    """A matcher far behind a big import: past MOST_WAITING pictures the hasher leaves none
    (the matcher decodes those files), and leaves them again once the matcher caught up."""
    from shared.image.pixels import SharedPictures

    shared = SharedPictures(tmp_path / "pictures")
    shared.MOST_WAITING, shared.COUNT_EVERY = 2, 1
    grey = np.zeros((3, 4), np.uint8)
    assert [shared.put((f"/p/{k}.jpg", 1, 1), grey) for k in range(3)] == [True, True, False]
    assert shared.waiting() == 2 and shared.get(("/p/2.jpg", 1, 1)) is None
    shared.drop(["/p/0.jpg"])
    assert shared.put(("/p/2.jpg", 1, 1), grey) and shared.get(("/p/2.jpg", 1, 1)) is not None


async def test_a_pictures_directory_that_cannot_be_written_is_said_once_and_signing_goes_on(tmp_path, caplog):
    from services.hasher.handler import ProcessSigner

    (tmp_path / "pictures").write_text("a file, not a folder")
    photo = tmp_path / "a.jpg"
    make_photo(23, (800, 600)).save(photo)
    signer = ProcessSigner(1, shared=tmp_path / "pictures")
    try:
        await signer.start()
        analysis = await signer(str(photo))
    finally:
        signer.close()
    assert [r.message.split(" (")[0] for r in caplog.records if "pictures_directory" in r.message] == [
        f"pictures_directory {tmp_path / 'pictures'} cannot be written"]
    assert analysis.signature.tobytes() == analyze(str(photo)).signature.tobytes()


def test_the_kept_pictures_stay_within_their_budget(monkeypatch):
    from shared.image import pixels
    from shared.image.compare import Features

    monkeypatch.setattr(pixels, "CACHE_BYTES", 2 * 512 * 384)
    kept = pixels.Pictures()
    for name in ("a", "b", "c"):
        kept.keep((name, 1, 1), Features(np.zeros((384, 512), np.uint8)))
    assert kept.get(("a", 1, 1)) is None, "the least recently used goes first"
    assert kept.get(("b", 1, 1)) is not None and kept.get(("c", 1, 1)) is not None


# --------------------------------------------------------------------------------------------
# the rules as a pure function


def _rec(path: str, **kw) -> ImageRecord:
    rng = np.random.default_rng(abs(hash(path)) % 2**32)
    base = dict(signature=rng.integers(-2, 3, 648).astype(np.int8), width=640, height=480,
                embedding=np.full(512, 5, np.int8))
    return ImageRecord(path, "/r", 100, 1, **{**base, **kw})


class Looks:
    def __init__(self, *answers: Agreement):
        self.answers, self.calls = list(answers), []

    async def __call__(self, a, b, turns):
        self.calls.append((a[0], b[0]))
        return self.answers.pop(0)


def _judge(a, b, look, **thresholds):
    return asyncio.run(same_photo(a, b, dataclasses.replace(DEFAULTS, **thresholds), look))


def test_rules_without_pixels():
    a = _rec("/r/a.jpg")
    same_bytes = _judge(dataclasses.replace(a, digest="d"), dataclasses.replace(a, path="/r/b.jpg", digest="d"), Looks())
    assert (same_bytes.same, same_bytes.stage) == (True, "exact")
    far = _rec("/r/far.jpg", embedding=np.full(512, -5, np.int8))
    look = Looks()
    evidence = _judge(a, far, look)
    assert not evidence.same and "neither" in evidence.reason and look.calls == [], "no pixels looked at"
    assert "not analysed" in _judge(a, _rec("/r/x.jpg", signature=None), Looks()).reason


def test_the_pixels_decide_and_the_better_look_counts():
    a, b = _rec("/r/a.jpg"), _rec("/r/b.jpg")  # the embeddings agree: proposed
    look = Looks((Agreement(score=0.9), Agreement(score=0.97)))
    evidence = _judge(a, b, look)
    assert evidence.same and evidence.stage == "embedding" and evidence.score == 0.97
    assert look.calls == [("/r/a.jpg", "/r/b.jpg")], "one look, both ways"
    assert _judge(a, b, Looks((Agreement(score=0.99), None))).score == 0.99, "a convincing first look is enough"
    evidence = _judge(a, b, Looks((Agreement(score=0.8), Agreement(score=0.60))))
    assert not evidence.same and "moved" in evidence.reason and evidence.score == 0.8
    evidence = _judge(a, b, Looks((Agreement(reason="the details do not line up"), None)))
    assert not evidence.same and evidence.reason == "the details do not line up"
    evidence = _judge(a, b, Looks((Agreement(score=0.9), Agreement(reason="part of the picture holds other content"))))
    assert not evidence.same and "other content" in evidence.reason, "a refusal from either side is final"
    assert _judge(a, b, Looks((Agreement(score=0.9), Agreement(score=0.9))), min_agreement=0.95).same is False


def test_the_better_look_reports_the_turn_of_b():
    a, b = _rec("/r/a.jpg"), _rec("/r/b.jpg")
    # the second look is a against b: its quarter turn one way is b's the other way
    evidence = _judge(a, b, Looks((Agreement(score=0.9, orientation=1), Agreement(score=1.0, orientation=1))))
    assert evidence.same and evidence.orientation == 3
    evidence = _judge(a, b, Looks((Agreement(score=0.9, orientation=5), Agreement(score=1.0, orientation=5))))
    assert evidence.orientation == 5, "a mirror undoes itself"


def _frames_of_a_moving_subject() -> list:
    from shared.image.compare import Features

    frames = []
    for dx in (0, 14):
        frame = make_photo(9, (640, 480))
        frame.paste(make_photo(10, (160, 160)), (240 + dx, 160))
        frames.append(Features(np.asarray(frame.convert("L").resize((512, 384)))))
    return frames


def test_a_refusal_or_a_convincing_look_settles_the_pair_in_one_look():
    from shared.image.compare import both_ways

    frames = _frames_of_a_moving_subject()
    forth, back = both_ways(*frames)
    assert forth.refuses and back is None
    forth, back = both_ways(frames[0], frames[0])
    assert forth.convincing and back is None


@pytest.mark.parametrize("turn", [None, *Image.Transpose])
def test_a_whole_copy_is_lined_up_by_its_size_without_keypoints(turn):
    """Most copies (re-encoded, resized, recoloured, turned, mirrored) show the whole picture:
    they are lined up by their sizes and the turn their thumbnails fit best, and no keypoints
    are computed for either picture. The turn is the one the keypoints would have found."""
    from shared.image.compare import Features, agreement, both_ways

    img = make_photo(5, (640, 480))
    copy = ImageEnhance.Brightness(img.resize((320, 240), Image.LANCZOS)).enhance(1.2).convert("L")
    a = Features(np.asarray(img.convert("L").resize((512, 384))))
    b = Features(np.asarray(copy if turn is None else copy.transpose(turn)))
    forth, back = both_ways(a, b)
    assert forth.convincing and back is None and (forth.inliers, forth.scale) == (0, 1.6), forth
    assert "keypoints" not in vars(a) and "keypoints" not in vars(b)
    assert forth.orientation == agreement(a, b).orientation
    # without match_orientations a turned or mirrored copy is no copy, by either way of looking
    forth, back = both_ways(a, b, turns=False)
    assert forth.convincing if turn is None else (forth.reason and (back is None or back.reason)), (forth, back)


def test_look_alikes_of_one_shape_are_not_taken_for_whole_copies():
    """Two frames of a moving subject: of one shape and alike, but the patch test refuses them."""
    from shared.image.compare import WHOLE_COPY_LIKENESS, _whole_copy, both_ways

    frames = _frames_of_a_moving_subject()
    assert float((frames[0].thumbnail * frames[1].thumbnail).sum()) >= WHOLE_COPY_LIKENESS
    assert _whole_copy(*frames, True) is None and both_ways(*frames)[0].refuses


def test_a_look_that_does_not_settle_the_pair_is_taken_the_other_way_too(monkeypatch):
    from shared.image import compare

    frames = _frames_of_a_moving_subject()
    asked = []

    def scripted(a, b, turns=True):
        asked.append((a, b))
        return Agreement(score=0.9) if len(asked) == 1 else Agreement(score=1.0)

    monkeypatch.setattr(compare, "agreement", scripted)
    forth, back = compare.both_ways(*frames)
    assert (forth.score, back.score) == (0.9, 1.0) and asked == [tuple(frames), tuple(frames[::-1])]


def test_a_pair_asked_the_other_way_round_is_answered_from_the_same_comparison():
    a, b = _rec("/r/a.jpg"), _rec("/r/b.jpg")
    look = Looks((Agreement(score=0.9, orientation=1), Agreement(score=0.97, orientation=1)),
                 (Agreement(score=0.99, orientation=1), None))
    remembering = RememberingLook(look, None)
    assert _judge(a, b, remembering).orientation == 3  # the better look: a against b, turned round
    turned = _judge(b, a, remembering)
    assert turned.same and turned.orientation == 1 and turned.score == 0.97
    c = _rec("/r/c.jpg")
    assert _judge(a, c, remembering).orientation == 1
    assert _judge(c, a, remembering).orientation == 3, "one look, seen from the other picture"
    assert look.calls == [("/r/a.jpg", "/r/b.jpg"), ("/r/a.jpg", "/r/c.jpg")]


def test_a_comparison_forgotten_after_its_component_is_recalled_from_the_ledger(tmp_path):
    """A whole library's plan forgets each component's comparisons once it is planned (memory
    stays bounded); one asked again comes back from the ledger, its pixels not looked at again."""
    from shared.store.comparisons import comparison_key
    from shared.store.sqlite_ledger import SQLiteLedger

    async def run():
        ledger = SQLiteLedger(tmp_path / "ledger.sqlite")
        try:
            look = Looks((Agreement(score=0.99, orientation=1), None), (Agreement(score=0.98, orientation=1), None))
            remembering = RememberingLook(look, ledger)
            a, b, c = (("/r/" + n, 1, 1) for n in "abc")
            await remembering(a, b, True)
            await remembering.forget()
            assert remembering._known == {} and not await ledger.recall([comparison_key(a, b, True)]), \
                "a new comparison waits to be written with others"
            await remembering.save()
            await remembering.recall([(b, a), (a, c)], True)
            turned, back = await remembering(b, a, True)
            assert (turned.score, turned.orientation, back) == (0.99, 3, None), "seen from the other picture"
            assert (await remembering(a, c, True))[0].score == 0.98
            assert look.calls == [("/r/a", "/r/b"), ("/r/a", "/r/c")] and (await ledger.recall([comparison_key(a, b, True)]))
        finally:
            await ledger.close()

    asyncio.run(run())


def test_the_ledger_is_asked_once_per_pair_and_written_once_enough_are_new(tmp_path, monkeypatch):
    """A pair the ledger does not hold is not asked for again (the verdict asks for its own pair
    after its component asked for all of them: a round trip to Elasticsearch each), and new
    comparisons are written ``SAVE_EVERY`` at a time by ``save_some``, the rest by ``save``."""
    from shared.store import comparisons
    from shared.store.sqlite_ledger import SQLiteLedger

    monkeypatch.setattr(comparisons, "SAVE_EVERY", 2)

    class Counting(SQLiteLedger):
        asked: list[int] = []
        written: list[int] = []

        async def recall(self, keys):
            self.asked.append(len(keys))
            return await super().recall(keys)

        async def remember(self, found):
            self.written.append(len(found))
            await super().remember(found)

    async def run():
        ledger = Counting(tmp_path / "ledger.sqlite")
        try:
            look = Looks(*[(Agreement(score=0.99, orientation=1), None)] * 3)
            remembering = RememberingLook(look, ledger)
            a, b, c, d = (("/r/" + n, 1, 1) for n in "abcd")
            await remembering.recall([(a, b), (a, c)], True)
            await remembering.recall([(a, b)], True)
            await remembering.recall([(b, a), (a, d)], True)
            assert ledger.asked == [4, 2], "each way round of each pair asked once"
            await remembering(a, b, True)
            await remembering.save_some()
            assert ledger.written == [], "one new comparison waits"
            await remembering(a, c, True)
            await remembering.save_some()
            assert ledger.written == [2]
            await remembering(a, d, True)
            await remembering.forget()
            assert ledger.written == [2]
            await remembering.save()
            await remembering.save()
            assert ledger.written == [2, 1], "the rest written once, nothing written for nothing"
        finally:
            await ledger.close()

    asyncio.run(run())


# --------------------------------------------------------------------------------------------
# one verdict for the matcher and for the actuator


def test_the_matcher_and_the_actuator_decide_with_the_same_function():
    assert matcher.same_photo is verdict.same_photo
    assert actuator.same_photo is verdict.same_photo


def test_a_mirrored_copy_is_acted_on_in_a_real_run(run_cli, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    img = make_photo(41, (640, 480))
    img.save(lib / "photo.jpg", quality=95)
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((480, 360)).save(lib / "mirrored.jpg", quality=85)
    img.transpose(Image.Transpose.ROTATE_270).save(lib / "turned.jpg", quality=85)
    result = run_cli("deduplicate", lib, "--no-dry-run", "--action", "delete")
    assert result.code == 0, result.err
    rows = summary_rows(result.out)
    assert rows["deleted (were)"] == "2" and rows["skipped (safety checks)"] == "0", result.out
    assert sorted(os.listdir(lib)) == ["photo.jpg"]
    [group] = result.report["groups"]
    assert {e["stage"] for e in group["evidence"].values()} <= {"goldberg", "embedding"}
    assert group["rule"] == "more_pixels" or group["rule"], group


def test_a_plain_cp_keeps_the_original(run_cli, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    make_photo(42, (640, 480)).save(lib / "a.jpg", quality=90)
    (lib / "a_copy.jpg").write_bytes((lib / "a.jpg").read_bytes())
    os.utime(lib / "a.jpg", (1_600_000_000, 1_600_000_000))  # the copy is newer, as cp makes it
    result = run_cli("deduplicate", lib)
    [group] = result.report["groups"]
    assert group["keep"] == str(lib / "a.jpg") and group["remove"] == [str(lib / "a_copy.jpg")]
    assert group["rule"] == "identical_name_then_older"
    assert group["evidence"][str(lib / "a_copy.jpg")]["stage"] == "exact"


# --------------------------------------------------------------------------------------------
# every family of copies at the edge of its range, and every kind of look-alike


def _hue(img: Image.Image, degrees: float) -> Image.Image:
    """The W3C hue-rotate matrix, as image editors (and the benchmark kit) apply it."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    m = (0.213 + c * 0.787 - s * 0.213, 0.715 - c * 0.715 - s * 0.715, 0.072 - c * 0.072 + s * 0.928, 0,
         0.213 - c * 0.213 + s * 0.143, 0.715 + c * 0.285 + s * 0.140, 0.072 - c * 0.072 - s * 0.283, 0,
         0.213 - c * 0.213 - s * 0.787, 0.715 - c * 0.715 + s * 0.715, 0.072 + c * 0.928 + s * 0.072, 0)
    return img.convert("RGB", m)


def _sepia(img: Image.Image) -> Image.Image:
    return img.convert("RGB", (0.393, 0.769, 0.189, 0, 0.349, 0.686, 0.168, 0, 0.272, 0.534, 0.131, 0))


def _straightened(img: Image.Image, degrees: float) -> Image.Image:
    """Turned by ``degrees`` and cut to the largest upright rectangle inside."""
    w, h = img.size
    a = np.radians(abs(degrees))
    if w <= h:
        raise ValueError("landscape only")
    cos, sin = np.cos(a), np.sin(a)
    # the largest axis-aligned rectangle of the turned picture's aspect ratio inside it
    k = h / (w * sin + h * cos)
    cw, ch = int(w * k), int(h * k)
    turned = img.rotate(degrees, resample=Image.BICUBIC)
    return turned.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))


def _bar(img: Image.Image, share: float, top: bool, colour: str = "white") -> Image.Image:
    bar = round(img.height * share)
    canvas = Image.new("RGB", (img.width, img.height + bar), colour)
    canvas.paste(img, (0, bar if top else 0))
    ImageDraw.Draw(canvas).text((20, (0 if top else img.height) + bar // 3), "Summer holidays 2021",
                                fill="black" if colour == "white" else "white")
    return canvas


def _square(img: Image.Image, blurred: bool) -> Image.Image:
    from PIL import ImageFilter

    side = max(img.size)
    canvas = img.resize((side, side)).filter(ImageFilter.GaussianBlur(side * 0.04)) if blurred \
        else Image.new("RGB", (side, side), (40, 90, 160))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def _curve(img: Image.Image, f) -> Image.Image:
    return img.point([min(255, max(0, round(f(v)))) for v in range(256)] * 3)


FAMILY_EDGES = {
    # crops keeping half of each side, in a corner and in the middle; an aspect crop to a square
    "crop 50% top left": lambda img: img.crop((0, 0, 320, 240)),
    "crop 50% middle": lambda img: img.crop((160, 120, 480, 360)),
    "aspect 1:1": lambda img: img.crop((160, 0, 640, 480)),
    "hue +45": lambda img: _hue(img, 45),
    "hue -45": lambda img: _hue(img, -45),
    "sepia": _sepia,
    "rotated 8 degrees": lambda img: _straightened(img, 8),
    "rotated -8 degrees": lambda img: _straightened(img, -8),
    "caption 20% at the bottom": lambda img: _bar(img, 0.2, top=False),
    "caption 20% at the top, black": lambda img: _bar(img, 0.2, top=True, colour="black"),
    "padded to a square": lambda img: _square(img, blurred=False),
    "padded to a square, blurred fill": lambda img: _square(img, blurred=True),
    "cropped and padded": lambda img: _square(img.crop((100, 0, 540, 480)).crop((0, 60, 440, 420)), blurred=True),
    "brighter, clipped": lambda img: _curve(img, lambda v: 1.4 * v),
    "less contrast": lambda img: _curve(img, lambda v: 128 + 0.6 * (v - 128)),
    "gamma 2": lambda img: _curve(img, lambda v: 255 * (v / 255) ** 2),
    "upscaled 2x from 45%": lambda img: img.resize((288, 216), Image.LANCZOS).resize((576, 432), Image.BICUBIC),
    "mirrored and turned": lambda img: img.transpose(Image.Transpose.TRANSVERSE),
}


@pytest.mark.parametrize("kind", sorted(FAMILY_EDGES))
def test_each_family_at_the_edge_of_its_range_is_the_same_photo(tmp_path, photo, kind):
    path, img = photo
    copy = _save(tmp_path, "copy.jpg", FAMILY_EDGES[kind](img), quality=85)
    for evidence in (judge(path, copy), judge(copy, path)):
        assert evidence.same, evidence


def _scene(background_seed: int, subject_at: tuple[int, int], size=(640, 480)) -> Image.Image:
    frame = make_photo(background_seed, size)
    frame.paste(make_photo(background_seed + 1, (170, 170)), subject_at)
    return frame


def _pan_pair(img: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Two views of one scene side by side: each 65% as wide, overlapping by half of that."""
    return img.crop((0, 0, 416, 480)), img.crop((224, 0, 640, 480)).resize((354, 408))


def _pasted(img: Image.Image) -> Image.Image:
    """A rectangle of 9% of the picture replaced by a feathered patch of another photo."""
    from PIL import ImageFilter

    out = img.copy()
    mask = Image.new("L", img.size, 0)
    ImageDraw.Draw(mask).rectangle((260, 170, 452, 310), fill=255)
    out.paste(make_photo(77, img.size), (0, 0), mask.filter(ImageFilter.GaussianBlur(6)))
    return out


def _landmark(img: Image.Image) -> Image.Image:
    """The same place from another viewpoint: the scene seen in perspective."""
    w, h = img.size
    return img.transform((w, h), Image.Transform.PERSPECTIVE, (1.1, 0.12, -40, 0.05, 1.05, -30, 0.0004, 0.0002),
                         resample=Image.BICUBIC)


LOOK_ALIKES = {
    # consecutive video frames and a burst: the subject moved, the background did not
    "video frames": lambda: (_scene(50, (200, 150)), _scene(50, (230, 150))),
    "burst": lambda: (_scene(60, (300, 200)), _scene(60, (300, 212))),
    # a stereo pair: the near subject shifts against the far background
    "stereo pair": lambda: (_scene(70, (240, 160)), _scene(70, (262, 160)).transform(
        (640, 480), Image.Transform.AFFINE, (1, 0, 4, 0, 1, 0))),
    "pan pair": lambda: _pan_pair(make_photo(80, (640, 480))),
    "pasted patch": lambda: (make_photo(90, (640, 480)), _pasted(make_photo(90, (640, 480)))),
    "another view of a landmark": lambda: (make_photo(95, (640, 480)), _landmark(make_photo(95, (640, 480)))),
}


@pytest.mark.parametrize("kind", sorted(LOOK_ALIKES))
def test_each_kind_of_look_alike_is_another_photo(tmp_path, kind):
    one, two = LOOK_ALIKES[kind]()
    a, b = _save(tmp_path, "a.jpg", one, quality=92), _save(tmp_path, "b.jpg", two, quality=92)
    for evidence in (judge(a, b), judge(b, a)):
        assert not evidence.same and evidence.reason, evidence
