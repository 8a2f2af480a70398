"""Ctrl-C, as a terminal sends it (SIGINT to the whole foreground process group: the command,
its forkserver and its decoder processes): one line and the summary of what was done, no
traceback from any process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from .conftest import save_photo
from .services_support import free_port, get, metric, wait_for

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_DEDUP_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"),
               PYTHONUNBUFFERED="1")
    env.update({f"IMAGE_DEDUP_{k.upper()}": v for k, v in settings.items()})
    return env


def _library(folder: Path, photos: int) -> Path:
    for seed in range(photos):
        save_photo(folder / f"{seed}.jpg", 200 + seed, (640, 480))
    save_photo(folder / "0 small.jpg", 200, (320, 240))
    return folder


def _analysed(store: Path) -> int:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:  # not made yet
        return 0


def _deduplicate(tmp_path: Path, lib: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "deduplicate", str(lib), "--threads", "1", "--store",
         str(tmp_path / "s.sqlite"), "--report", str(tmp_path / "r.json")],
        cwd=ROOT, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _listening_on(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at ``port`` (Linux's /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def _ctrl_c(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)


def _interrupted_run(tmp_path: Path, lib: Path, presses: int) -> tuple[str, str]:
    """A run's output after Ctrl-C was pressed ``presses`` times once it analysed a file."""
    proc = _deduplicate(tmp_path, lib)
    try:
        wait_for(lambda: _analysed(tmp_path / "s.sqlite") > 0 or proc.poll() is not None, 120, "no file analysed")
        for _ in range(presses):
            _ctrl_c(proc)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert "(interrupted)" in out and err.splitlines()[-1] == \
        "image-dedup: interrupted: the summary above is what was done; run again to go on"
    return out, err


def test_ctrl_c_during_a_run_stops_after_the_files_in_hand_with_the_summary(tmp_path):
    lib = _library(tmp_path / "lib", 60)
    out, err = _interrupted_run(tmp_path, lib, 1)
    assert err.splitlines()[0] == "image-dedup: stopping after the files in hand (Ctrl-C again to stop at once)"
    assert "image-dedup summary (dry run: nothing was changed) (interrupted)" in " ".join(out.split())
    analysed = int(next(line for line in out.splitlines() if "analysed now" in line).split("│")[2])
    assert 0 < analysed < 61 and _analysed(tmp_path / "s.sqlite") == analysed, "stopped after what was in hand"
    # the next run goes on where this one stopped
    again = subprocess.run([sys.executable, "-m", "services.cli", "deduplicate", str(lib), "--threads", "1",
                            "--store", str(tmp_path / "s.sqlite")], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "unchanged since last run" in again.stdout


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    _interrupted_run(tmp_path, _library(tmp_path / "lib", 60), 2)


def test_ctrl_c_on_the_daemon_stops_it_with_one_line_of_what_it_did(tmp_path):
    lib = _library(tmp_path / "lib", 2)
    port = free_port()
    env = _env(tmp_path, source_directories=f'["{lib}"]', store_path=str(tmp_path / "s.sqlite"), threads="2",
               metrics_port=str(port), broker_url="amqp://nobody@127.0.0.1:1/", match_delay="0.2",
               watch_debounce="0.2")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "daemon"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: get(port, "/readyz")[0] == 200 or proc.poll() is not None, 60, "not ready")
        assert _listening_on(port) == {"127.0.0.1"}, "the metrics are this machine's only by default"
        wait_for(lambda: metric(get(port, "/metrics")[1], "image_dedup_actuator_actions_total", status="dry_run") == 1,
                 60, "the pair was not matched")
        _ctrl_c(proc)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    [stopped] = [line for line in out.splitlines() if "daemon stopped" in line]
    assert "3 images analysed, 1 duplicate group, 0 duplicates acted on, 1 in a dry run" in stopped, stopped


def test_ctrl_c_on_the_review_server_stops_it_quietly(run_cli, tmp_path):
    lib = tmp_path / "lib"
    save_photo(lib / "a.jpg", 230, (640, 480))
    save_photo(lib / "a small.jpg", 230, (320, 240))
    env = _env(tmp_path)
    subprocess.run([sys.executable, "-m", "services.cli", "deduplicate", str(lib), "--store", str(tmp_path / "s.sqlite"),
                    "--report", str(tmp_path / "r.json")], cwd=ROOT, env=env, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "review", str(tmp_path / "r.json"), str(lib),
                             "--store", str(tmp_path / "s.sqlite"), "--threads", "2"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url = next(line.split()[1] for line in proc.stdout if line.startswith("open "))
        import urllib.request

        with urllib.request.urlopen(url.replace("/?", "/api/thumb/0/1?"), timeout=60) as r:  # the thumbnailers start
            assert r.status == 200
        _ctrl_c(proc)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err and err == "", err
