"""How long `import diffjax` takes in a fresh interpreter, and what it spends the time on.

    python bench/import_time.py [--runs 5] [--json bench/results/import_time_cpu.json]

Each run is a new `python -X importtime -c "import diffjax"`; the table gives the wall time of the
whole process and the cumulative import time of diffjax and of its heaviest dependencies (jax, flax,
optax, ...), median and min over the runs. The first run also pays for cold files (after a fresh
install); `tests/test_imports.py` checks that scikit-learn, diffrax and orbax stay out of it.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

WATCH = ("diffjax", "jax", "flax", "optax", "chex", "numpy", "ml_collections", "matplotlib")


def one_run() -> dict:
    """Wall seconds of the process and cumulative import seconds of each top-level package in WATCH."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import diffjax"], capture_output=True,
                         text=True, check=True)  # fmt: skip
    wall = time.perf_counter() - start
    cumulative = {}
    for line in out.stderr.splitlines():  # "import time: self [us] | cumulative | imported package"
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, total, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if name in WATCH:
            cumulative[name] = int(total) / 1e6
    return {"wall": wall, **cumulative}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    runs = [one_run() for _ in range(args.runs)]
    names = ["wall"] + [n for n in WATCH if n in runs[0]]
    print(f"{'seconds':>16} {'median':>8} {'min':>8} {'first':>8}")
    rows = {}
    for name in names:
        values = [r[name] for r in runs if name in r]
        rows[name] = {"median": statistics.median(values), "min": min(values), "first": values[0]}
        print(f"{name:>16} {rows[name]['median']:8.2f} {rows[name]['min']:8.2f} {values[0]:8.2f}")
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.machine(), "runs": args.runs}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "seconds": rows}, f, indent=1)


if __name__ == "__main__":
    main()
