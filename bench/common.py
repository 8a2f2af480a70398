"""Helpers shared by the benchmark scripts: machine description, markdown tables, the kit.

Every table a benchmark prints starts with :func:`machine_line`, because absolute numbers on a
shared 2-core box mean little without it.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The benchmark kit (make_library.py, score.py) lives next to the repository, ../shared/bench,
#: or where BENCH_KIT says.
KIT_CANDIDATES = tuple(Path(p) for p in (os.environ.get("BENCH_KIT"),) if p) + (REPO.parent / "shared" / "bench",)
DEFAULT_LIB = Path.home() / "bench" / "lib"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line() -> str:
    """One line naming the machine: cores, CPU model, Python, OS."""
    return (
        f"Machine: {os.cpu_count()} cores (os.cpu_count()), {cpu_model()}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def command_line() -> str:
    """The command that is running, for 'produced by' lines."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])


_phase_peaks: list[float] = []  # what each phase reached (a reset forgets it for the kernel)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: ru_maxrss (KiB on Linux), or the highest
    phase peak, since a reset of the phase peak resets ru_maxrss too."""
    return max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, *_phase_peaks])


def phase_peak_rss_mb(reset: bool = False) -> float | None:
    """Peak resident memory in MB since the last reset (Linux's VmHWM), read before ``reset``
    sets it back to the current size (writing 5 to /proc/self/clear_refs), so a phase's own
    peak is told apart from what the phases before it reached; None where the kernel does not
    say."""
    try:
        peak = next(int(line.split()[1]) / 1024.0 for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("VmHWM:"))
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
    except (OSError, StopIteration):
        return None
    _phase_peaks.append(peak)
    return peak


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def find_kit(explicit: str | Path | None = None) -> Path | None:
    """The benchmark kit folder (holding score.py), or None when it is not there."""
    for cand in ([Path(explicit)] if explicit else []) + list(KIT_CANDIDATES):
        if (cand / "score.py").is_file():
            return cand
    return None


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))
    return s[k]
