"""What the command says, and what it leaves readable: secrets masked in ``config show``, the
metrics on this machine only, private store, journals and thumbnails, the groups of a dry run,
the pairs across roots it left out, config errors one to a line with the option meant, and a
rescan that nobody hears."""

from __future__ import annotations

import json
import os
import stat

import pytest

from shared.config import load_settings

from .conftest import save_photo
from .services_support import broker_url, vhost  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("isolated_env")


def test_config_show_masks_every_password(run_cli, monkeypatch):
    monkeypatch.setenv("IMAGE_DEDUP_BROKER_URL", "amqp://u:s3cret@h/")
    monkeypatch.setenv("IMAGE_DEDUP_ELASTICSEARCH_URL", "http://elastic:es-s3cret@es:9200")
    monkeypatch.setenv("IMAGE_DEDUP_ELASTICSEARCH_PASSWORD", "pw-s3cret")
    monkeypatch.setenv("IMAGE_DEDUP_ELASTICSEARCH_API_KEY", "key-s3cret")
    shown = run_cli("config", "show")
    assert shown.code == 0 and "s3cret" not in shown.out, shown.out
    config = json.loads(shown.out)
    assert config["broker_url"] == "amqp://u:**********@h/"
    assert config["elasticsearch_url"] == "http://elastic:**********@es:9200"
    assert config["elasticsearch_password"] == config["elasticsearch_api_key"] == "**********"
    assert load_settings().broker_url == "amqp://u:s3cret@h/", "the services still get the real one"


def test_metrics_listen_on_this_machine_only_unless_configured(tmp_path):
    assert load_settings().metrics_host == "127.0.0.1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dockerfile = open(os.path.join(root, "Dockerfile")).read()
    assert "IMAGE_DEDUP_METRICS_HOST=0.0.0.0" in dockerfile, "in a container, Prometheus and the probes reach them"


def test_the_store_journals_and_their_folders_are_private(run_cli, tmp_path, isolated_env):
    lib = tmp_path / "lib"
    save_photo(lib / "a.jpg", 310, (640, 480))
    save_photo(lib / "a small.jpg", 310, (320, 240))
    data = isolated_env / "data" / "image-dedup"
    result = run_cli("deduplicate", lib, "--no-dry-run", "--action", "delete", store=data / "store.sqlite")
    assert result.code == 0, result.err
    [journal] = (data / "journals").glob("*.jsonl")
    for path in (data, data / "journals"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in (data / "store.sqlite", journal, *data.glob("store.sqlite-*")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_dry_run_lists_its_groups(run_cli, tmp_path):
    lib = tmp_path / "lib"
    for seed in range(12):
        save_photo(lib / f"{seed:02}.jpg", 320 + seed, (640, 480))
        save_photo(lib / f"{seed:02} small.jpg", 320 + seed, (320, 240))
    result = run_cli("deduplicate", lib, report=False)
    lines = result.out.splitlines()
    keeps = [line for line in lines if line.startswith("keep   ")]
    dups = [line for line in lines if line.startswith("  dup  ")]
    assert len(keeps) == len(dups) == 10 and keeps[0] == f"keep   {lib / '00.jpg'}" and dups[0] == f"  dup  {lib / '00 small.jpg'}"
    assert "and 2 more groups: --report FILE writes them all (for image-dedup review and apply)" in lines
    with_report = run_cli("deduplicate", lib)
    assert f"and 2 more groups: all are in {tmp_path / 'report.json'}" in with_report.out.splitlines()
    real = run_cli("deduplicate", lib, "--no-dry-run", "--action", "delete")
    assert not any(line.startswith("keep   ") for line in real.out.splitlines()), "a real run has its journal"


def test_pairs_across_roots_that_were_left_out_are_counted(run_cli, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    save_photo(one / "a.jpg", 340, (640, 480))
    save_photo(two / "a.jpg", 340, (320, 240))
    save_photo(two / "b.jpg", 341, (640, 480))
    save_photo(two / "b small.jpg", 341, (320, 240))
    message = ("1 pair of look-alike files in different roots was not compared (across_dirs is off): "
               "--across-dirs compares them")
    for _ in range(2):  # the second run reuses the first one's plan, and says the same
        result = run_cli("deduplicate", one, two)
        assert len(result.report["groups"]) == 1 and message in result.out.splitlines(), result.out
    across = run_cli("deduplicate", one, two, "--across-dirs")
    assert len(across.report["groups"]) == 2 and "different roots" not in across.out
    single = run_cli("deduplicate", two)
    assert "different roots" not in single.out


def test_config_errors_one_to_a_line_naming_the_option_meant(run_cli, tmp_path, monkeypatch, caplog):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("max_dist: 5\nthreads: 0\ndryrun: false\n")
    result = run_cli("--config", cfg, "config", "show")
    assert result.code == 2 and "\\n" not in result.err
    assert result.err.splitlines() == [
        "image-dedup: invalid config: dryrun: unknown option (did you mean dry_run?)",
        "image-dedup: invalid config: max_dist: Input should be less than or equal to 1",
        "image-dedup: invalid config: threads: Input should be greater than or equal to 1",
    ] or sorted(result.err.splitlines()) == sorted([
        "image-dedup: invalid config: dryrun: unknown option (did you mean dry_run?)",
        "image-dedup: invalid config: max_dist: Input should be less than or equal to 1",
        "image-dedup: invalid config: threads: Input should be greater than or equal to 1"]), result.err
    (tmp_path / "lib").mkdir()
    result = run_cli("deduplicate", tmp_path / "lib", "--target", tmp_path / "lib")
    assert result.err.startswith("image-dedup: invalid config: duplicates_target_directory ") and "config: config" not in result.err
    monkeypatch.setenv("IMAGE_DEDUP_DRYRUN", "false")
    with caplog.at_level("WARNING"):
        run_cli("config", "show")
    assert any("IMAGE_DEDUP_DRYRUN (did you mean IMAGE_DEDUP_DRY_RUN?)" in r.getMessage() for r in caplog.records)


def test_a_rescan_that_no_watcher_hears_says_so(run_cli, monkeypatch, vhost, tmp_path):  # noqa: F811
    (tmp_path / "lib").mkdir()
    monkeypatch.setenv("IMAGE_DEDUP_BROKER_URL", broker_url(vhost))
    monkeypatch.setenv("IMAGE_DEDUP_BROKER_PREFIX", f"nobody-{os.getpid()}")
    monkeypatch.setenv("IMAGE_DEDUP_SOURCE_DIRECTORIES", json.dumps([str(tmp_path / "lib")]))
    result = run_cli("rescan")
    assert result.code == 0, result.err
    assert "no watcher is listening" in result.out and "published" not in result.out
