"""Real photo libraries in services mode: the four services as processes over the real
RabbitMQ see a unit's files arrive in any order and decide on whole units, as local mode does."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

from PIL import Image

from tests.conftest import make_photo, save_photo
from tests.library_support import write_dng
from tests.services_support import VENV_BIN, Services, broker_url, dead_letters, vhost, wait_for  # noqa: F401


def _contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def test_services_move_whole_units_whatever_order_their_files_arrive_in(tmp_path, vhost):
    """A RAW+JPEG unit is kept against a smaller copy that arrives later; that copy's video
    and sidecar arrive after it was moved, and follow it; a corrupt RAW is dead-lettered with
    one line and the services go on; one undo of the journals brings every file back."""
    photos, target = tmp_path / "photos", tmp_path / "dups"
    camera = photos / "camera"
    jpeg = save_photo(camera / "IMG_1.JPG", 41, (640, 480))
    raw = write_dng(camera / "IMG_1.DNG", make_photo(41).resize((640, 480), Image.LANCZOS), preview=True)
    bad = camera / "IMG_9.NEF"
    bad.write_bytes(b"II*\x00" + os.urandom(4000))
    prefix = f"lib-{uuid.uuid4().hex[:8]}"
    services = Services(tmp_path / "svc", photos, broker_url(vhost), prefix, action="move",
                        duplicates_target_directory=target)
    phone = photos / "phone"
    try:
        for role in ("watcher", "hasher", "matcher", "actuator"):
            services.start(role)
        services.wait_ready(timeout=120)
        letters: list = []  # read once: reading takes them off the queue
        wait_for(lambda: letters.extend(asyncio.run(dead_letters(services.env["IMAGE_DEDUP_BROKER_URL"], prefix)))
                 or letters, 60, lambda: f"the corrupt RAW was not dead-lettered\n{services.log_text()}")
        before = _contents(photos)  # the library the services settled on: nothing to remove yet
        phone.mkdir()
        still = save_photo(phone / "IMG_2.JPG", 41, (320, 240))
        moved_still = target / "photos" / "phone" / "IMG_2.JPG"
        wait_for(lambda: moved_still.exists() and not still.exists(), 90,
                 lambda: f"the copy was not moved\n{services.log_text()}")
        # the Live Photo's video and a sidecar, written after their still was moved
        video, sidecar = phone / "IMG_2.MOV", phone / "IMG_2.JPG.xmp"
        video.write_bytes(b"\x00\x00\x00\x18ftypqt  " + os.urandom(3000))
        sidecar.write_text("<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
        wait_for(lambda: not video.exists() and not sidecar.exists(), 90,
                 lambda: f"the video and sidecar stayed behind\n{services.log_text()}")
        assert {p.name for p in moved_still.parent.iterdir()} == {"IMG_2.JPG", "IMG_2.MOV", "IMG_2.JPG.xmp"}
        assert jpeg.exists() and raw.exists() and bad.exists(), "the kept unit stays whole"
        [(body, headers)] = letters + asyncio.run(dead_letters(services.env["IMAGE_DEDUP_BROKER_URL"], prefix))
        assert b"IMG_9.NEF" in body and "\n" not in headers["x-death-reason"] and "NEF" in headers["x-death-reason"]
    finally:
        services.stop()
    journals = sorted((tmp_path / "svc" / "journals").glob("*.jsonl"))
    entries = [json.loads(line) for j in journals for line in j.read_text().splitlines()]
    assert sorted(e["path"] for e in entries if e["state"] == "intent") == sorted(map(str, (still, video, sidecar)))
    undone = subprocess.run([str(VENV_BIN / "image-dedup"), "undo", *map(str, journals)], env=services.env,
                            capture_output=True, text=True, timeout=120)
    assert undone.returncode == 0, undone.stderr
    after = _contents(photos)
    assert {k: v for k, v in after.items() if not k.startswith("phone/")} == before
    assert set(after) - set(before) == {"phone/IMG_2.JPG", "phone/IMG_2.MOV", "phone/IMG_2.JPG.xmp"}
