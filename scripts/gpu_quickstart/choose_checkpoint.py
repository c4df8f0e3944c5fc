"""Pick a checkpoint by the rule fixed before the run (docs/results.md): the most Python tasks solved
(accuracy >= 0.90) on the validation sample, ties to the lower validation language-model loss.

    python choose_checkpoint.py VAL_DIR METRICS_JSONL OUT_JSON

VAL_DIR holds `val-step-N.json` files written by `sparsecircuits tasks CKPT --json`. Prints the
chosen step; OUT_JSON gets every checkpoint's accuracies and the choice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sparsecircuits.tasks import get_task

SOLVED = 0.90


def main() -> None:
    vals, metrics_path, table_path = (Path(a) for a in sys.argv[1:4])
    loss = {}
    for line in metrics_path.read_text().splitlines():
        m = json.loads(line)
        if "val_loss" in m:
            loss[m["step"]] = m["val_loss"]
    rows = []
    for f in sorted(vals.glob("val-step-*.json"), key=lambda p: int(p.stem.split("-")[-1])):
        step = int(f.stem.split("-")[-1])
        tasks = json.loads(f.read_text())["tasks"]
        acc = {k: v["accuracy"] for k, v in tasks.items() if "error" not in v and get_task(k).domain == "python"}
        solved = sorted(k for k, a in acc.items() if a >= SOLVED)
        rows.append({"step": step, "val_loss": loss.get(step), "accuracy": acc, "solved": solved})
    if not rows:
        sys.exit(f"no val-step-*.json in {vals}")
    best = max(rows, key=lambda r: (len(r["solved"]), -(r["val_loss"] if r["val_loss"] is not None else 1e9)))
    table_path.write_text(json.dumps({"rows": rows, "chosen": best["step"]}, indent=1))
    sys.stdout.write(f"{best['step']}\n")


if __name__ == "__main__":
    main()
