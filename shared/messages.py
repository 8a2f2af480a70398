"""Message contracts: the only things that travel between the four services.

Messages carry paths and small facts, never image bytes. Every model has a ``version``; a
consumer rejects (dead-letters) a message whose version or body it does not understand instead
of guessing. ``kind`` doubles as the routing key on the broker.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

CONTRACT_VERSION = 1


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    version: Literal[1] = CONTRACT_VERSION


class FileEvent(_Message):
    """The watcher saw a file appear, change or vanish under a root."""

    kind: Literal["file.event"] = "file.event"
    path: str
    change: Literal["upsert", "deleted"] = "upsert"


class Rescan(_Message):
    """A command to the watcher: walk the roots (or one folder below a root) again."""

    kind: Literal["watcher.rescan"] = "watcher.rescan"
    path: str | None = None


class ImageSigned(_Message):
    """The hasher stored a fresh signature for ``path``."""

    kind: Literal["image.signed"] = "image.signed"
    path: str


class Member(BaseModel):
    """Another file of a unit (``shared.core.bundles``), as planned: an image (a RAW and the
    camera's JPEG of it are one unit), whose analysis must be unchanged when it is acted on,
    or a companion (sidecar, Live Photo video), which travels with it as it is then."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    size: int
    mtime_ns: int
    kind: Literal["image", "video", "sidecar"]
    format: str = ""


class FileRef(BaseModel):
    """A file as it was analysed; the actuator refuses to act if it changed since. The other
    facts are for people reading a report. ``members``: the other files of its unit."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    path: str
    size: int
    mtime_ns: int
    width: int = 0
    height: int = 0
    format: str = ""
    frames: int = 1
    members: tuple[Member, ...] = ()


class Evidence(BaseModel):
    """Why the verdict says two files show the same photo (or, with ``reason``, why not)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    same: bool
    stage: Literal["exact", "goldberg", "embedding", "none"]
    distance: float | None = None  # Goldberg distance, in the orientation below
    orientation: int = 0  # 0..7: which turn or mirror of the kept file matched
    similarity: float | None = None  # cosine of the copy-detection embeddings
    score: float | None = None  # the pixel verification's agreement, 0..1
    reason: str = ""
    #: how the verification lined the second file up on the first (``Agreement.transform``)
    transform: tuple[float, float, float, float, float, float] | None = None


class Removal(FileRef):
    distance: float
    evidence: Evidence | None = None
    metadata: dict[str, str] = Field(default_factory=dict)  # what only this copy holds, in words per field
    why: str = ""  # why the kept file was kept over this one, in words ("bigger file: 2.1 MB vs 1.4 MB")


class Decision(_Message):
    """The matcher's verdict for one group: keep ``keep``, remove each of ``remove``; ``rule``
    is the ranking rule that chose the kept copy."""

    kind: Literal["group.decision"] = "group.decision"
    keep: FileRef
    remove: list[Removal]
    rule: str = ""
    why: str = ""  # why the kept file was kept over the runner-up, in words


class FileRemoved(_Message):
    """The actuator moved, trashed, deleted or hard-linked a duplicate."""

    kind: Literal["file.removed"] = "file.removed"
    path: str
    keep: str
    action: Literal["move", "trash", "delete", "hardlink"]
    target: str | None = None
    files: tuple[str, ...] = ()  # every file of the unit acted on, path first


Message = Annotated[
    Union[FileEvent, Rescan, ImageSigned, Decision, FileRemoved], Field(discriminator="kind")
]
_adapter: TypeAdapter[Message] = TypeAdapter(Message)

ROUTING_KEYS: tuple[str, ...] = ("file.event", "watcher.rescan", "image.signed", "group.decision", "file.removed")


def decode(body: bytes | str) -> Message:
    """Parse a message body; raises ``pydantic.ValidationError`` (or ``ValueError``, for what is
    not JSON) on anything unknown."""
    try:
        data = json.loads(body)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise ValueError(f"Invalid JSON: {exc}") from None
    return _adapter.validate_python(data)


def encode(message: _Message) -> bytes:
    """ASCII JSON: a file name that is not valid UTF-8 (held as surrogate escapes) travels as
    ``\\udcXX`` and ``decode`` gives back the same name (pydantic's own JSON refuses both ways)."""
    return json.dumps(message.model_dump(mode="json")).encode("ascii")
