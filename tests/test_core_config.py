"""shared/config.py and the config commands: defaults < YAML < IMAGE_DEDUP_* env < CLI flags,
one-line errors naming the key (exit 2), and a reference YAML that loads back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from shared.config import DEFAULT_RULES, ConfigError, Settings, load_settings

pytestmark = pytest.mark.usefixtures("isolated_env")


def _yaml(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(isolated_env):
    s = load_settings()
    assert s.dry_run is True
    assert (s.max_dist, s.min_similarity, s.min_agreement) == (0.40, 0.35, 0.85)
    assert s.match_orientations is True
    assert s.source_directories == []
    assert s.prioritization_rules == DEFAULT_RULES
    assert s.recursive is True and s.across_dirs is False and s.remove_empty_folders is False
    assert s.effective_action == "trash", "never deleted for good unless asked"
    assert s.store_path == isolated_env / "data" / "image-dedup" / "store.sqlite"
    assert s.journal_directory == isolated_env / "data" / "image-dedup" / "journals"


def test_precedence_defaults_yaml_env_flags(tmp_path, monkeypatch):
    cfg = _yaml(tmp_path, "max_dist: 0.3\ndry_run: false\nthreads: 3\nsource_directories: [/from/yaml]\n"
                          "across_dirs: true\n")
    s = load_settings(cfg)
    assert (s.max_dist, s.dry_run, s.threads, s.source_directories, s.across_dirs) == (
        0.3, False, 3, [Path("/from/yaml")], True)
    assert s.recursive is True  # untouched keys keep their defaults

    monkeypatch.setenv("IMAGE_DEDUP_MAX_DIST", "0.35")
    monkeypatch.setenv("IMAGE_DEDUP_THREADS", "5")
    monkeypatch.setenv("IMAGE_DEDUP_SOURCE_DIRECTORIES", '["/photos"]')
    s = load_settings(cfg)
    assert (s.max_dist, s.threads, s.source_directories) == (0.35, 5, [Path("/photos")])
    assert s.dry_run is False and s.across_dirs is True  # from YAML still

    s = load_settings(cfg, max_dist=0.4, dry_run=True, threads=None, source_directories=[Path("/cli")])
    assert (s.max_dist, s.dry_run, s.threads, s.source_directories) == (0.4, True, 5, [Path("/cli")])


def test_env_values_as_documented(monkeypatch):
    monkeypatch.setenv("IMAGE_DEDUP_DRY_RUN", "false")
    monkeypatch.setenv("IMAGE_DEDUP_SOURCE_DIRECTORIES", '["/photos", "~/more"]')
    monkeypatch.setenv("IMAGE_DEDUP_PRIORITIZATION_RULES", '["bigger_file", "more_pixels"]')
    monkeypatch.setenv("IMAGE_DEDUP_FILE_EXTENSIONS", '["JPG", ".Png"]')
    s = load_settings()
    assert s.dry_run is False
    assert s.source_directories == [Path("/photos"), Path.home() / "more"]
    assert s.prioritization_rules == ["bigger_file", "more_pixels"]
    assert s.file_extensions == [".jpg", ".png"]


def test_yaml_file_from_env_and_from_the_default_location(tmp_path, monkeypatch, isolated_env):
    default = isolated_env / "config" / "image-dedup" / "config.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("max_dist: 0.11\n")
    assert load_settings().max_dist == 0.11
    monkeypatch.setenv("IMAGE_DEDUP_CONFIG", str(_yaml(tmp_path, "max_dist: 0.12\n")))
    assert load_settings().max_dist == 0.12
    assert load_settings(_yaml(tmp_path, "max_dist: 0.13\n", "other.yaml")).max_dist == 0.13


def test_target_inside_a_root_is_allowed_but_the_root_itself_is_not(tmp_path):
    """A target below a root is never scanned (tests/test_local_trash.py), so it needs no exclusion."""
    root = tmp_path / "photos"
    with pytest.raises(ConfigError, match="duplicates_target_directory .* is the root"):
        load_settings(source_directories=[root], duplicates_target_directory=root)
    assert load_settings(source_directories=[root], duplicates_target_directory=root / "dups").effective_action == "move"
    load_settings(source_directories=[root], duplicates_target_directory=tmp_path / "photos-dups")


def test_target_that_would_put_duplicates_back_into_a_root_is_a_config_error(tmp_path):
    # duplicates of <root> go to <target>/<root name>/...: with the root's parent as target that
    # is the root itself
    root = tmp_path / "photos"
    with pytest.raises(ConfigError, match="duplicates_target_directory"):
        load_settings(source_directories=[root], duplicates_target_directory=tmp_path)


def test_effective_action():
    assert load_settings(duplicates_target_directory=Path("/t")).effective_action == "move"
    assert load_settings().effective_action == "trash"
    assert load_settings(action="hardlink").effective_action == "hardlink"
    assert load_settings(action="delete").effective_action == "delete"


@pytest.mark.parametrize("flags, message", [
    (dict(action="move"), "action move needs duplicates_target_directory"),
    (dict(action="hardlink", duplicates_target_directory=Path("/t")), "only used by action move, not hardlink"),
    (dict(action="delete", duplicates_target_directory=Path("/t")), "only used by action move, not delete"),
])
def test_action_and_target_must_fit(flags, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(**flags)


def test_a_target_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "t").write_text("a file")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        load_settings(duplicates_target_directory=tmp_path / "t")


def test_a_root_given_twice_or_inside_another_counts_once(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    s = load_settings(source_directories=[tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / ".." / "a"])
    assert s.source_directories == [tmp_path / "a"]


def test_unknown_environment_variables_are_warned_about(monkeypatch, caplog):
    monkeypatch.setenv("IMAGE_DEDUP_DRYRUN", "false")
    with caplog.at_level("WARNING"):
        s = load_settings()
    assert s.dry_run is True
    [record] = [r for r in caplog.records if "IMAGE_DEDUP_DRYRUN" in r.getMessage()]
    assert "unknown environment variable" in record.getMessage() and "\n" not in record.getMessage()


@pytest.mark.parametrize("kwargs, key", [
    ({"max_dist": 0}, "max_dist"),
    ({"max_dist": 1.5}, "max_dist"),
    ({"threads": 0}, "threads"),
    ({"prioritization_rules": ["more_pixels", "biggest_smile"]}, "prioritization_rules"),
    ({"prioritization_rules": ["more_pixels", "more_pixels"]}, "prioritization_rules"),
    ({"exclusions": ["(unclosed"]}, "exclusions"),
    ({"action": "shred"}, "action"),
    ({"no_such_option": 1}, "no_such_option"),
])
def test_invalid_values_raise_one_line_naming_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        load_settings(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid config: {key}")


# --------------------------------------------------------------------------------------------
# through the command


def _one_line_error(result, key: str) -> None:
    assert result.code == 2
    assert "Traceback" not in result.err and "Traceback" not in result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("image-dedup: ") and key in lines[0], lines[0]


@pytest.mark.parametrize("yaml_text, key", [
    ("max_dist: 2\n", "max_dist"),
    ("bogus_option: 1\n", "bogus_option"),
    ("threads: many\n", "threads"),
    ("prioritization_rules: [bigger_file, nicest]\n", "prioritization_rules"),
])
def test_cli_invalid_yaml_value(run_cli, tmp_path, yaml_text, key):
    (tmp_path / "lib").mkdir()
    cfg = _yaml(tmp_path, yaml_text)
    _one_line_error(run_cli("--config", cfg, "deduplicate", tmp_path / "lib", threads=None), key)
    _one_line_error(run_cli("--config", cfg, "config", "show"), key)


@pytest.mark.parametrize("env, value", [
    ("IMAGE_DEDUP_MAX_DIST", "abc"),
    ("IMAGE_DEDUP_DRY_RUN", "maybe"),
    ("IMAGE_DEDUP_SOURCE_DIRECTORIES", "/photos"),  # not JSON
    ("IMAGE_DEDUP_EXCLUSIONS", '["(unclosed"]'),
])
def test_cli_invalid_env_value(run_cli, monkeypatch, env, value):
    monkeypatch.setenv(env, value)
    _one_line_error(run_cli("config", "show"), env.removeprefix("IMAGE_DEDUP_").lower())


def test_cli_invalid_files_and_flags(run_cli, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    _one_line_error(run_cli("--config", tmp_path / "missing.yaml", "config", "show"), "missing.yaml")
    _one_line_error(run_cli("--config", _yaml(tmp_path, "max_dist: [1\n"), "config", "show"), "not valid YAML")
    _one_line_error(run_cli("--config", _yaml(tmp_path, "- a list\n"), "config", "show"), "mapping")
    _one_line_error(run_cli("deduplicate", lib, "--max-dist", "5"), "max_dist")
    _one_line_error(run_cli("deduplicate", tmp_path / "nope"), "source_directories")
    _one_line_error(run_cli("deduplicate"), "source_directories")
    _one_line_error(run_cli("deduplicate", lib, "--target", lib), "duplicates_target_directory")


def test_cli_config_show_reflects_precedence(run_cli, tmp_path, monkeypatch):
    cfg = _yaml(tmp_path, "max_dist: 0.3\nthreads: 3\nrecursive: false\n")
    monkeypatch.setenv("IMAGE_DEDUP_THREADS", "4")
    result = run_cli("--config", cfg, "config", "show")
    assert result.code == 0
    shown = json.loads(result.out)
    assert (shown["max_dist"], shown["threads"], shown["recursive"], shown["dry_run"]) == (0.3, 4, False, True)


def test_cli_flags_beat_env_and_yaml_in_a_run(run_cli, tmp_path, monkeypatch):
    from .conftest import save_photo, tree_state

    lib = tmp_path / "lib"
    save_photo(lib / "a.jpg", 1)
    save_photo(lib / "b.jpg", 1, (200, 150), quality=80)
    cfg = _yaml(tmp_path, "dry_run: false\n")
    monkeypatch.setenv("IMAGE_DEDUP_DRY_RUN", "false")
    before = tree_state(lib)
    result = run_cli("--config", cfg, "deduplicate", lib, "--dry-run")
    assert result.code == 0 and "dry run" in result.out
    assert tree_state(lib) == before
    # without the flag, env (and YAML) turn the dry run off
    result = run_cli("--config", cfg, "deduplicate", lib)
    assert result.code == 0
    assert (lib / "a.jpg").exists() and not (lib / "b.jpg").exists()


def test_config_reference_is_valid_yaml_listing_every_option_and_loads_back(run_cli, tmp_path):
    result = run_cli("config", "reference")
    assert result.code == 0
    text = result.out
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    fields = set(Settings.model_fields)
    machine_specific = {"threads", "store_path", "journal_directory"}  # shown commented out
    assert set(loaded) == fields - machine_specific
    commented = set(re.findall(r"^# (\w+):\s*$", text, flags=re.M))
    assert commented == machine_specific
    for name, field in Settings.model_fields.items():
        assert field.description and f"# {field.description}" in text, name
    # the reference, used as a config file, gives exactly the defaults
    ref = _yaml(tmp_path, text, "reference.yaml")
    assert load_settings(ref) == load_settings()
    assert load_settings(ref).model_dump() == Settings().model_dump()


def test_an_elasticsearch_that_does_not_answer_is_one_line_and_exit_2(run_cli, tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    monkeypatch.setenv("IMAGE_DEDUP_ELASTICSEARCH_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    result = run_cli("deduplicate", tmp_path / "photos")
    _one_line_error(result, "Elasticsearch at http://127.0.0.1:9 does not answer")
