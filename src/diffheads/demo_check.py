"""The demo's learning check: `python -m diffheads.demo_check outputs/demo/report.json`."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

MIN_LIP_SYNC_R = 0.5  # issue acceptance; the goal is 0.8
MAX_ABS_CONTROL_R = 0.2  # chance-level control must stay near 0


def check_report(report: dict) -> list[str]:
    """Problems with a demo report (empty when lip sync was learned)."""
    problems = []
    r, control = report.get("lip_sync_r"), report.get("control_lip_sync_r")
    if r is None or not math.isfinite(r) or r < MIN_LIP_SYNC_R:
        problems.append(f"lip_sync_r = {r} < {MIN_LIP_SYNC_R}")
    if control is None or not math.isfinite(control) or abs(control) > MAX_ABS_CONTROL_R:
        problems.append(f"|control_lip_sync_r| = {control} > {MAX_ABS_CONTROL_R}")
    if report.get("n_clips", 0) < 2:
        problems.append(f"n_clips = {report.get('n_clips')} < 2")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the report shows learned lip sync, 1 otherwise."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "outputs/demo/report.json")
    if not path.is_file():
        print(f"demo_check: {path} not found; run 'make demo' first", file=sys.stderr)
        return 1
    report = json.loads(path.read_text())
    problems = check_report(report)
    summary = f"lip_sync_r={report.get('lip_sync_r'):.3f} control={report.get('control_lip_sync_r'):.3f}"
    if problems:
        print(f"demo_check: FAILED ({summary}): " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"demo_check: ok ({summary}, n_clips={report.get('n_clips')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
