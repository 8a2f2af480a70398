"""Set-up and start-up as a new user meets them: the README's set-up installs the package only
and its test section is what CI runs; ``--version`` and ``--help`` load none of the heavy
libraries, and a run says what it is about to do before it loads them."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from .conftest import save_photo

ROOT = Path(__file__).resolve().parents[1]
#: Libraries that take a second or more to load together; only the commands that use them may.
HEAVY = ("onnxruntime", "cv2", "scipy", "elasticsearch", "aio_pika")


def _imported(stderr: str) -> set[str]:
    """The top-level modules ``python -X importtime`` reported loading."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", stderr, re.M)}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_DEDUP_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"))
    return env


def test_version_and_help_load_no_heavy_library(tmp_path):
    for args in (["--version"], ["--help"], ["deduplicate", "--help"], ["review", "--help"], ["service", "--help"]):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "services.cli", *args], cwd=ROOT,
                              env=_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith("image-dedup 0.") if args == ["--version"] else "usage:" in done.stdout
        loaded = _imported(done.stderr)
        assert "argparse" in loaded, "importtime reported nothing: the test would prove nothing"
        assert not loaded & set(HEAVY), (args, loaded & set(HEAVY))


def test_a_run_says_what_it_does_before_loading_the_heavy_libraries(tmp_path):
    """On a terminal (a pty), the first line comes before OpenCV, ONNX Runtime or SciPy is loaded."""
    lib = tmp_path / "lib"
    save_photo(lib / "a.jpg", 97)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "services.cli", "deduplicate", str(lib),
                             "--threads", "1", "--store", str(tmp_path / "s.sqlite")],
                            cwd=ROOT, env=_env(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the pty closed: the command ended
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=120)
    os.close(master)
    assert proc.returncode == 0, seen.decode(errors="replace")[-2000:]
    text = seen.decode(errors="replace").replace("\r\n", "\n")
    first = text.index(f"image-dedup: looking for duplicates in {lib} (dry run: nothing will be changed)")
    heavy = [m.start() for m in re.finditer(r"^import time:.*\| +(" + "|".join(HEAVY) + r")\b", text, re.M)]
    assert heavy, "the run loads them later: the test must see that"
    assert first < min(heavy)
    assert b"files found" in out


def test_the_readme_installs_the_package_for_users_and_the_extras_for_tests():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    setup = next(b for b in blocks if "-m venv .venv" in b)
    assert re.search(r"pip install -e \.\s*$", setup.splitlines()[0]), "the user's set-up: the package only"
    assert "[test]" not in setup
    tests = readme.split("## Tests", 1)[1]
    test_lines = [line for line in re.findall(r"```sh\n(.*?)```", tests, re.S)[0].splitlines() if line.strip()]
    assert test_lines == [".venv/bin/pip install -e '.[test]'", ".venv/bin/python -m pytest -q"]
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ci[-2:] == test_lines, "CI runs exactly the README's test commands"
    assert re.search(r"takes about \d+ MB of disk .* minutes", " ".join(readme.split())), "says what set-up takes"
