"""All configuration in one model: defaults < YAML file < ``IMAGE_DEDUP_*`` env < CLI flags.

``image-dedup config reference`` prints a commented YAML generated from this model, so the
descriptions below are the user-facing documentation of every option.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from .core.bundles import RAW_EXTENSIONS
from pydantic_settings import (
    BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError, YamlConfigSettingsSource,
)

RuleName = Literal[
    "original",
    "with_raw",
    "with_video",
    "with_sidecar",
    "more_pixels",
    "more_exif_data",
    "bigger_file",
    "newer_mtime",
    "smaller_distance",
    "name_without_copy",
    "longer_file_name",
    "shorter_folder_path",
    "higher_score",
]
DEFAULT_RULES: list[RuleName] = list(RuleName.__args__)  # type: ignore[attr-defined]
log = logging.getLogger("image_dedup.config")
DEFAULT_EXTENSIONS = [".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl",
                      *sorted(RAW_EXTENSIONS)]


def data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "image-dedup"


def default_config_file() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "image-dedup" / "config.yaml"


class ConfigError(Exception):
    """A configuration problem, worded for the user in one line."""


WATCH_POLL_FALLBACK = 10.0  # seconds between polls where the system cannot watch the roots


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGE_DEDUP_", extra="forbid", validate_default=True)

    source_directories: list[Path] = Field(default_factory=list, description="Folders (roots) to scan for photos.")
    reference_directories: list[Path] = Field(
        default_factory=list,
        description="Reference folders (an archive): scanned and matched like the roots, but nothing in them is "
        "ever removed; a copy elsewhere of a photo in one is removed in its favour, whatever across_dirs says.",
    )
    recursive: bool = Field(True, description="Also scan the sub-folders of each root.")
    file_extensions: list[str] = Field(
        default_factory=lambda: list(DEFAULT_EXTENSIONS), description="File name endings to analyse (case-insensitive)."
    )
    exclusions: list[str] = Field(
        default_factory=list, description="Regular expressions; a path matching any of them is ignored."
    )
    threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="Parallel decoders (processes); default: cores."
    )
    use_exif_data: bool = Field(True, description="Read EXIF data and let it count in the ranking.")
    max_dist: float = Field(
        0.40, gt=0, le=1,
        description="Goldberg stage: largest normalised signature distance (in any orientation) at which a "
        "pair is proposed for verification. Generous, because the pixel verification decides; "
        "unrelated photos lie from about 0.5 up (see docs/benchmarks.md).",
    )
    min_similarity: float = Field(
        0.35, ge=-1, le=1,
        description="Embedding stage: smallest cosine of two copy-detection embeddings at which a pair is "
        "proposed for verification (finds crops, borders, captions and small rotations). Copies found by the "
        "embedding alone lie at 0.39 and up on the kit's wide mix; of 268,000 pairs of different photos, 41 "
        "lie above 0.35, each one more pixel comparison (see docs/benchmarks.md).",
    )
    min_agreement: float = Field(
        0.85, gt=0, le=1,
        description="Verification: smallest share of textured patches that must sit in place once the two "
        "pictures are lined up. Copies score about 0.9-1.0; consecutive video frames and burst shots, "
        "whose subjects moved, about 0.7 and less (see docs/benchmarks.md).",
    )
    prioritization_rules: list[RuleName] = Field(
        default_factory=lambda: list(DEFAULT_RULES),
        description="How the copy to keep is chosen, first rule first; the path breaks the last tie. original: "
        "a file made from another one (upscaled, cropped, padded, captioned, re-saved, re-encoded, turned) is "
        "never kept over it; leave it out for the plain order of the others.",
    )
    across_dirs: bool = Field(False, description="May a duplicate lie in another root than the copy it matches?")
    max_file_modification_time_diff: float | None = Field(
        None, ge=0, description="If set, files whose mtimes differ by more seconds are never duplicates."
    )
    match_orientations: bool = Field(
        True, description="Also match copies that were rotated by 90/180/270 degrees or mirrored."
    )
    duplicates_target_directory: Path | None = Field(
        None, description="Move duplicates here, to <target>/<root folder name>/<path below the root>; "
        "unset: move them to the desktop trash. Never scanned, even when it lies below a root."
    )
    action: Literal["move", "trash", "delete", "hardlink"] | None = Field(
        None,
        description="What to do with a duplicate; unset: move if a target directory is set, else trash "
        "(the desktop trash, restorable). delete removes it for good; hardlink replaces it by a hard link "
        "to the kept file (same filesystem and same format only).",
    )
    merge_metadata: Literal["off", "xmp"] = Field(
        "off", description="xmp: what only a removed copy holds (location, capture date, keywords, rating, title, "
        "description) is written to an XMP sidecar of the kept file (never into the image), journaled and undone "
        "like any action; off: the report and the review page only say so.",
    )
    remove_empty_folders: bool = Field(False, description="Remove folders that this run emptied (never a root).")
    dry_run: bool = Field(True, description="Only report what would be done; change nothing on disk.")
    store_path: Path = Field(
        default_factory=lambda: data_dir() / "store.sqlite", description="The SQLite store (signatures, metadata)."
    )
    elasticsearch_url: str | None = Field(
        None, description="Elasticsearch 8 URL, e.g. http://127.0.0.1:9200, for the store and the actuators' "
        "ledger (services on several hosts); unset: the SQLite store at store_path.",
    )
    elasticsearch_index: str = Field(
        "images", description="Index of the image records; the ledger uses <index>-ledger.",
    )
    elasticsearch_api_key: SecretStr | None = Field(None, description="Elasticsearch API key (encoded form).")
    elasticsearch_username: str | None = Field(None, description="Elasticsearch user (basic authentication).")
    elasticsearch_password: SecretStr | None = Field(None, description="Password of elasticsearch_username.")
    elasticsearch_ca_certs: Path | None = Field(
        None, description="CA certificate file (PEM) that signed the Elasticsearch server's certificate.",
    )
    journal_directory: Path = Field(
        default_factory=lambda: data_dir() / "journals", description="Where each run's journal of actions is written."
    )
    pictures_directory: Path | None = Field(
        None, description="Services mode: a folder the hashers and matchers share (one host, or a shared volume), "
        "where a hasher leaves the picture the pixel comparison needs of each image it signs (~0.2 MB an image "
        "until it is matched), so the matcher does not decode the file again; unset: the matcher decodes it.",
    )
    broker_url: str = Field("amqp://guest:guest@127.0.0.1:5672/", description="RabbitMQ URL (services mode).")
    broker_prefix: str = Field("image-dedup", description="Prefix of the exchange and queue names on the broker.")
    metrics_port: int = Field(9100, ge=0, le=65535, description="Port of /metrics, /healthz and /readyz (services).")
    metrics_host: str = Field(
        "127.0.0.1", description="Address /metrics, /healthz and /readyz listen on: this machine only by default; "
        "the container image sets 0.0.0.0, for Prometheus and the Kubernetes probes to reach them.",
    )
    concurrency: int = Field(4, ge=1, description="Messages a service works on at once (and its broker prefetch).")
    max_retries: int = Field(3, ge=0, description="Deliveries of a failing message before it is dead-lettered.")
    match_delay: float = Field(
        2.0, ge=0, description="Matcher waits for this many quiet seconds so a whole import is matched at once."
    )
    reconcile_interval: float = Field(
        60.0, gt=0, description="Matcher, when idle, looks this often for stored images that have no plan yet "
        "(their announcement was lost in a crash) and plans them.",
    )
    watch_debounce: float = Field(
        2.0, ge=0, description="Watcher publishes a file once it has not changed for this many seconds."
    )
    watch_poll: float = Field(
        0, ge=0, description="Watcher polls the roots every this many seconds instead of asking the system to watch "
        "them (0: watch; polling is needed on a network share that other hosts change, and is used every "
        f"{WATCH_POLL_FALLBACK:g} s where the system cannot watch).",
    )

    @field_validator("file_extensions")
    @classmethod
    def _dotted_lowercase(cls, value: list[str]) -> list[str]:
        return [(e if e.startswith(".") else "." + e).lower() for e in value]

    @field_validator("exclusions")
    @classmethod
    def _valid_regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
        return value

    @field_validator(
        "source_directories", "reference_directories", "duplicates_target_directory", "store_path", "journal_directory",
        "elasticsearch_ca_certs", "pictures_directory", mode="before",
    )
    @classmethod
    def _not_blank(cls, value: Any) -> Any:
        """An empty path would mean the current folder (a script's unset ``$PHOTOS``): refused."""
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and not item.strip():
                raise ValueError("an empty path (an unset variable?); give a folder")
        return value

    @field_validator(
        "source_directories", "reference_directories", "duplicates_target_directory", "store_path", "journal_directory",
        "elasticsearch_ca_certs", "pictures_directory",
    )
    @classmethod
    def _absolute(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [Path(os.path.abspath(os.path.expanduser(p))) for p in value]
        return None if value is None else Path(os.path.abspath(os.path.expanduser(value)))

    @field_validator("prioritization_rules")
    @classmethod
    def _no_repeats(cls, value: list[RuleName]) -> list[RuleName]:
        if len(set(value)) != len(value):
            raise ValueError("a rule is listed twice")
        return value

    @model_validator(mode="after")
    def _distinct_roots(self) -> Settings:
        """A root given twice, or inside another root, is one root: its files are found once.
        Reference folders are roots too (scanned and matched); nothing below them is removed."""
        roots = list(dict.fromkeys([*self.source_directories, *self.reference_directories]))
        self.source_directories = [r for r in roots if not any(o in r.parents for o in roots)]
        return self

    @model_validator(mode="after")
    def _target_fits_action(self) -> Settings:
        target = self.duplicates_target_directory
        if target is None:
            if self.action == "move":
                raise ValueError("action move needs duplicates_target_directory (--target FOLDER)")
            return self
        if self.action not in (None, "move"):
            raise ValueError(f"duplicates_target_directory is only used by action move, not {self.action}")
        if target.exists() and not target.is_dir():
            raise ValueError(f"duplicates_target_directory {target} is a file, not a folder")
        for root in self.source_directories:
            moved_to = target / root.name  # where this root's duplicates go (actuator.target_for)
            if moved_to in self.source_directories:
                raise ValueError(
                    f"duplicates_target_directory {target} would put duplicates of {root} back into "
                    f"{moved_to}; choose another folder"
                )
            # a target below a root is fine: it is never scanned (services.watcher.handler.walk)
            if target == root:
                raise ValueError(f"duplicates_target_directory {target} is the root {root}; choose another folder")
        return self

    def shown(self) -> str:
        """The settings as JSON for people: secrets masked, the passwords in the broker's and
        Elasticsearch's URLs too."""
        data = json.loads(self.model_dump_json())
        for key in ("broker_url", "elasticsearch_url"):
            if data[key]:
                data[key] = masked_url(data[key])
        return json.dumps(data, indent=2, ensure_ascii=False)

    @property
    def effective_action(self) -> Literal["move", "trash", "delete", "hardlink"]:
        """Deleting for good only when asked for: without a target, duplicates go to the trash."""
        if self.action:
            return self.action
        return "move" if self.duplicates_target_directory else "trash"

    def is_reference(self, path: str) -> bool:
        """Does ``path`` lie in a reference folder (never removed from)?"""
        norm = os.path.normpath(os.path.abspath(path))
        return any(norm == str(r) or norm.startswith(str(r).rstrip(os.sep) + os.sep) for r in self.reference_directories)

    def is_excluded(self, path: str) -> bool:
        return any(re.search(p, path) for p in self.exclusions)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_file = _yaml_file_in_use
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)


_yaml_file_in_use: Path | None = None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; ``overrides`` are CLI flags (None means 'not given').

    The YAML file is ``config_file``, else ``$IMAGE_DEDUP_CONFIG``, else the user's
    ``~/.config/image-dedup/config.yaml`` if it exists. Raises ConfigError with one line per
    problem naming the key.
    """
    global _yaml_file_in_use
    path = config_file or os.environ.get("IMAGE_DEDUP_CONFIG")
    if path is None and default_config_file().is_file():
        path = default_config_file()
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            content = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if content is not None and not isinstance(content, dict):
            raise ConfigError(f"config file {path} must hold a mapping of option: value")
    _yaml_file_in_use = path
    for key in sorted(os.environ):
        if key.startswith("IMAGE_DEDUP_") and key != "IMAGE_DEDUP_CONFIG" and key[12:].lower() not in Settings.model_fields:
            meant = _close_option(key[12:].lower())
            log.warning("ignoring unknown environment variable %s (%s)", key,
                        f"did you mean IMAGE_DEDUP_{meant.upper()}?" if meant else f"no option {key[12:].lower()}")
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:  # e.g. an environment variable holding a list that is not JSON
        m = re.search(r'field "([^"]+)"', str(exc))
        key = m.group(1) if m else "config"
        raise ConfigError(
            f"invalid config: {key}: cannot parse IMAGE_DEDUP_{key.upper()} (lists must be JSON, "
            f"e.g. '[\"/photos\"]')"
        ) from None
    finally:
        _yaml_file_in_use = None


def _close_option(name: str) -> str | None:
    """The option a mistyped ``name`` most likely meant (``dryrun``: ``dry_run``), if any."""
    squashed = {option.replace("_", ""): option for option in Settings.model_fields}
    return squashed.get(name.replace("_", "")) or next(iter(difflib.get_close_matches(name, Settings.model_fields, 1, 0.8)), None)


def _describe(exc: ValidationError) -> str:
    """One line per problem, naming the option (none for a rule between options)."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            meant = _close_option(key)
            message = "unknown option" + (f" (did you mean {meant}?)" if meant else "")
        lines.append(f"invalid config: {key}: {message}" if key else f"invalid config: {message}")
    return "\n".join(lines)


def masked_url(url: str) -> str:
    """``url`` with its password, if it holds one, as ``**********`` (as SecretStr shows it)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user_info, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user_info.split(':', 1)[0]}:**********@{host}").geturl()


def reference_yaml() -> str:
    """A commented YAML file listing every option with its description and default."""
    out = ["# image-dedup configuration reference (generated from shared/config.py).",
           "# Every option can also be set as an environment variable IMAGE_DEDUP_<NAME>",
           "# (lists as JSON, e.g. IMAGE_DEDUP_SOURCE_DIRECTORIES='[\"/photos\"]'); CLI flags win.", ""]
    for name, field in Settings.model_fields.items():
        out.append(f"# {field.description}")
        if name in {"threads", "store_path", "journal_directory"}:
            out.append(f"# default: {_default_note(name)}")
            out.append(f"# {name}:")
        else:
            default = field.get_default(call_default_factory=True)
            dumped = yaml.safe_dump({name: _plain(default)}, default_flow_style=False, allow_unicode=True)
            out.append(dumped.rstrip())
        out.append("")
    return "\n".join(out)


def _default_note(name: str) -> str:
    return {
        "threads": "the number of cores",
        "store_path": "$XDG_DATA_HOME/image-dedup/store.sqlite (~/.local/share/...)",
        "journal_directory": "$XDG_DATA_HOME/image-dedup/journals",
    }[name]


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
