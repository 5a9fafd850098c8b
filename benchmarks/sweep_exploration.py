"""Sweep DST-EE's `exploration` (c) and `epsilon`, with and without |g|
normalised per layer, to choose the library's defaults.

    python benchmarks/sweep_exploration.py            # 10k images, 6 epochs, updates every 50 steps
    python benchmarks/sweep_exploration.py --quick    # 2.5k images, 2 epochs, every 10 steps

c = 0 is RigL. Writes `benchmarks/results/sweep_exploration[_quick].json`
and prints a markdown table.
"""

import argparse
import json
import os

import keras
from common import RESULTS
from common import load_cifar10
from common import train_cifar

# (exploration, epsilon, normalize_gradients)
GRID = [
    (0.0, 1.0, True),
    (0.3, 1.0, True),
    (1.0, 1.0, True),
    (3.0, 1.0, True),
    (1e-3, 1.0, False),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.98])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # Update often enough that a short run has several mask updates.
    epochs, size, update_freq = (2, 2500, 10) if args.quick else (6, 10000, 50)
    data = load_cifar10(train_size=size)
    out = os.path.join(RESULTS, "sweep_exploration_quick.json" if args.quick else "sweep_exploration.json")
    report = {
        "command": "python benchmarks/sweep_exploration.py" + (" --quick" if args.quick else ""),
        "backend": keras.backend.backend(),
        "train_images": size,
        "epochs": epochs,
        "update_freq": update_freq,
        "runs": [],
    }
    if os.path.isfile(out):
        # Re-running continues: runs of the same setup already done are kept.
        with open(out) as f:
            previous = json.load(f)
        if all(previous.get(k) == report[k] for k in ("backend", "train_images", "epochs", "update_freq")):
            report["runs"] = previous["runs"]
    done = {(r["sparsity"], r["exploration"], r["epsilon"], r["normalize_gradients"]) for r in report["runs"]}
    for sparsity in args.sparsities:
        for c, eps, normalize in GRID:
            if (sparsity, c, eps, normalize) in done:
                continue
            run = train_cifar("dstee", sparsity, args.seed, epochs, data,
                              update_freq=update_freq, exploration=c, epsilon=eps,
                              normalize_gradients=normalize)
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
            with open(out, "w") as f:
                json.dump(report, f, indent=1)
    print("| sparsity | exploration c | epsilon | normalised |g| | test accuracy % | coverage |")
    print("|---|---|---|---|---|---|")
    for r in report["runs"]:
        print(f"| {r['sparsity']} | {r['exploration']} | {r['epsilon']} | {r['normalize_gradients']} "
              f"| {100 * r['test_accuracy']:.2f} | {r['coverage']:.3f} |")


if __name__ == "__main__":
    main()
