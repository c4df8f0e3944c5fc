"""Start-up time of the command line: how long `sparsecircuits --help` and friends take before any work.

Times, in fresh processes, `python -c pass` (the bare interpreter), `sparsecircuits --help`,
`sparsecircuits train --help`, `sparsecircuits discover --help` and `sparsecircuits --version`:
`--runs` rounds, each running every command once (interleaved, so a slow spell of the machine hits all
of them alike), then per command the median wall time and its excess over the bare interpreter's
median. Target (issue 23): every excess < 0.3 s, i.e. the CLI starts without importing torch.
`sparsecircuits` is the console script next to this interpreter (what a user types), else
`python -m sparsecircuits`. The 1-minute load average at the start and the end is recorded: other
jobs on the machine inflate every row. Prints a table and writes JSON (default
benchmarks/results/cli_startup.json).

    python benchmarks/cli_startup.py [--runs 21]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

TARGET_EXCESS_S = 0.3


def launcher() -> list[str]:
    """The `sparsecircuits` console script of this interpreter's environment, else `python -m sparsecircuits`."""
    script = shutil.which("sparsecircuits", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "sparsecircuits"]


def wall_seconds(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21, help="rounds; every command runs once per round (default: 21)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cli_startup.json")
    args = ap.parse_args()
    cli = launcher()
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "sparsecircuits --help": [*cli, "--help"],
                "sparsecircuits train --help": [*cli, "train", "--help"],
                "sparsecircuits discover --help": [*cli, "discover", "--help"],
                "sparsecircuits --version": [*cli, "--version"]}
    console = Console(width=None if Console().is_terminal else 120)
    for cmd in commands.values():  # warm the file cache and byte-code once, untimed
        wall_seconds(cmd)
    load = {"start": os.getloadavg()[0]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    with console.status(f"{args.runs} rounds of {len(commands)} commands"):
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(wall_seconds(cmd))
    load["end"] = os.getloadavg()[0]
    bare = statistics.median(times["python -c pass"])
    rows = []
    for name, ts in times.items():
        median = statistics.median(ts)
        rows.append({"command": name, "median_s": median, "min_s": min(ts), "max_s": max(ts),
                     "excess_s": median - bare, "meets_target": name == "python -c pass" or median - bare < TARGET_EXCESS_S})
    table = Table(title=f"CLI start-up: median of {args.runs} interleaved runs; load average {load['start']:.2f} -> "
                        f"{load['end']:.2f}; target: < {TARGET_EXCESS_S} s above `python -c pass`")
    for col in ("command", "median (s)", "min (s)", "max (s)", "above python -c pass (s)", "target"):
        table.add_column(col, justify="left" if col == "command" else "right")
    for r in rows:
        table.add_row(r["command"], f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", f"{r['max_s']:.3f}",
                      f"{r['excess_s']:+.3f}", "" if r["command"] == "python -c pass" else "met" if r["meets_target"] else "MISSED")
    console.print(table)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "runs": args.runs,
            "launcher": " ".join(Path(c).name for c in cli), "load_average": load, "target_excess_s": TARGET_EXCESS_S}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "seconds": times}, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
