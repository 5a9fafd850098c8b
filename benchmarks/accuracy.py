"""Test accuracy of dense and every registered method (static, SET, RigL,
DST-EE, GMP, GraNet) on real CIFAR-10.

    python benchmarks/accuracy.py            # full: 20k images, 2 seeds (~1-2 h on 2 cores)
    python benchmarks/accuracy.py --quick    # 5k images, 1 seed, 4 epochs, updates every 20 steps (< 10 min)

Same model (the 0.29M-parameter CNN of `common.py`), recipe and epochs for
every method: SGD momentum 0.9 nesterov, lr 0.05 cosine, weight decay 5e-4,
batch 128, flip + translation augmentation, masks updated every 100 steps
until 75% of training. Writes `benchmarks/results/accuracy[_quick].json` after
every run (re-running skips the runs already there) and prints a markdown
table (mean +- std over seeds).
"""

import argparse
import json
import os
import statistics

import keras
from common import BUILDERS
from common import METHODS
from common import RESULTS
from common import continue_report
from common import load_cifar10
from common import machine
from common import spread
from common import train_cifar


def table(runs):
    lines = ["| method | sparsity | test accuracy % (mean +- std) | seeds | coverage |",
             "|---|---|---|---|---|"]
    keys = sorted({(r["method"], r["sparsity"]) for r in runs}, key=lambda k: (k[1], METHODS.index(k[0])))
    for method, sparsity in keys:
        group = [r for r in runs if r["method"] == method and r["sparsity"] == sparsity]
        accs = [100 * r["test_accuracy"] for r in group]
        coverage = statistics.mean(r["coverage"] for r in group)
        lines.append(f"| {method} | {sparsity} | {statistics.mean(accs):.2f} +- {spread(accs):.2f} | {len(group)} | {coverage:.3f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.98])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--train-size", type=int)
    parser.add_argument("--update-freq", type=int)
    parser.add_argument("--model", choices=sorted(BUILDERS), default="small_cnn")
    parser.add_argument("--out", help="result file (default: results/accuracy[_quick].json)")
    args = parser.parse_args()
    epochs = args.epochs or (4 if args.quick else 10)
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    train_size = args.train_size or (5000 if args.quick else None)
    update_freq = args.update_freq or (20 if args.quick else 100)  # quick: 160 steps, 6 updates
    data = load_cifar10(train_size=train_size)
    out = args.out or os.path.join(RESULTS, "accuracy_quick.json" if args.quick else "accuracy.json")
    report = {
        "command": "python benchmarks/accuracy.py" + (" --quick" if args.quick else ""),
        "backend": keras.backend.backend(),
        "machine": machine("cores"),
        "train_images": len(data[0][0]),
        "epochs": epochs,
        "update_freq": update_freq,
        "model": args.model,
        "runs": [],
    }
    continue_report(out, report, ("backend", "train_images", "epochs", "update_freq", "model"))
    done = {(r["method"], r["sparsity"], r["seed"]) for r in report["runs"]}
    for seed in seeds:
        for method in args.methods:
            for sparsity in ([0.0] if method == "dense" else args.sparsities):
                if (method, sparsity, seed) in done:
                    continue
                run = train_cifar(method, sparsity, seed, epochs, data, update_freq=update_freq,
                                  model=args.model)
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
                with open(out, "w") as f:
                    json.dump(report, f, indent=1)
    print(table(report["runs"]))


if __name__ == "__main__":
    main()
