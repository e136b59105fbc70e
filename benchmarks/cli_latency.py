"""How long the command line takes to answer, as a ratio to ``python -c "import torch"`` (issue 30).

Each case is a fresh process run the way a user runs it (the ``rats`` / ``rats-run`` console scripts next
to this Python); the reference is importing torch in a fresh interpreter. The cases and the reference are
run interleaved (one of each per round, ``--reps`` rounds) and compared by their medians, so a machine
that gets busier or quieter during the run moves both alike. Targets: ``rats --help`` < 0.5, a config
error <= 1.5, the missing weights named <= 3.

    python benchmarks/cli_latency.py                   # all cases, 5 rounds
    python benchmarks/cli_latency.py --reps 1 --cases help,config_error

The Hub is offline (``HF_HUB_OFFLINE=1``, as for every benchmark): the missing-weights cases measure
rats, not the network's answer time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, machine, progress, summary  # noqa: E402

BIN = Path(sys.executable).parent
SDXL = "experiments/sdxl.yaml"

#: name -> (argv, the exit status it must end with)
CASES = {
    "help": ([str(BIN / "rats"), "--help"], 0),
    "config_error": ([str(BIN / "rats"), "validate", "experiments/digits.yaml", "train.step=5"], 2),
    # a mistake in a component's options: the registry loads every built-in plugin to check it
    "option_error": ([str(BIN / "rats"), "validate", SDXL, "gate.tua=1"], 2),
    "plugins": ([str(BIN / "rats"), "plugins"], 0),
    "validate_no_weights": ([str(BIN / "rats"), "validate", SDXL, "--no-weights"], 0),
    "run_missing_weights": ([str(BIN / "rats-run"), SDXL], 2),
}
REFERENCE = ([sys.executable, "-c", "import torch"], 0)
TARGETS = {"help": 0.5, "config_error": 1.5, "option_error": 1.5, "run_missing_weights": 3.0}


def wall(argv: list[str], want_rc: int) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != want_rc:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}, expected {want_rc}\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    args = ap.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {list(CASES)}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    times: dict[str, list[float]] = {"import_torch": [], **{c: [] for c in cases}}
    for r in range(args.reps):
        order = ["import_torch", *cases] if r % 2 == 0 else [*cases, "import_torch"]
        for name in order:
            argv, rc = REFERENCE if name == "import_torch" else CASES[name]
            times[name].append(wall(argv, rc))
        progress(f"round {r + 1}/{args.reps}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    ref = summary(times["import_torch"])["median"]
    out = {
        "benchmark": "cli_latency",
        "reps": args.reps,
        "import_torch_s": summary(times["import_torch"]),
        "cases": {},
        "machine": machine(),
    }
    for c in cases:
        s = summary(times[c])
        ratio = round(s["median"] / ref, 3)
        entry = {"argv": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(CASES[c][0])),
                 "seconds": s, "ratio": ratio}
        if c in TARGETS:
            entry["target"] = TARGETS[c]
            entry["meets_target"] = ratio <= TARGETS[c]
        out["cases"][c] = entry
    emit(out)


if __name__ == "__main__":
    main()
