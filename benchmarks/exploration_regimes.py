"""Where DST-EE's exploration could pay: many mask updates at extreme
sparsity, RigL vs SET vs DST-EE (default and the best variant), on real
CIFAR-10.

    python benchmarks/exploration_regimes.py           # the study: ~2.2 h on 2 cores, resumes
    python benchmarks/exploration_regimes.py --quick   # 2k images, 3 epochs, 1 seed (< 10 min)

Regime: 10k training images, batch 64, 6 epochs (936 steps), masks updated
every 6 steps until 75% of training: 117 mask updates, against 5-10 in
`accuracy.py`. Sparsity 0.98 and 0.99. Architectures: the small CNN of
`common.py` (0.29M parameters) and `keras_dstee.models.mlp_cifar` (5.26M),
both behind flips and translations; SGD momentum 0.9 nesterov, lr 0.05
cosine, weight decay 5e-4, ERK.

1. Selection: on a seed kept out of the table (100), each DST-EE variant
   (`count="periods"`, `bonus_decay="cosine"`, both, `exploration=3`) at
   0.98 per architecture; the most accurate is "the best variant".
2. The table: SET, RigL, DST-EE default and the best variant, seeds 0-4,
   both sparsities and architectures, with the paired difference to RigL
   per seed (same seed: same initial mask and data order).
3. A plot of test accuracy and coverage per epoch, every method, one
   column per architecture and sparsity.

Every run is appended to `benchmarks/results/exploration_regimes[_quick].json`
(or `--out`) as it finishes; re-running skips the runs already there.
`--models/--variants/--seeds/--sparsities/--epochs/--train-size/--train-offset/--update-freq`
override the study's settings; with `--variants`, no selection runs
(`benchmarks/gpu.sh` uses them for its ResNet-50 comparison).
"""

import argparse
import json
import os
import statistics
import sys

import keras
from common import BUILDERS
from common import RESULTS
from common import continue_report
from common import load_cifar10
from common import machine
from common import spread
from common import train_cifar
from common import write_table

VARIANTS = {
    "dstee": {},
    "dstee_periods": {"count": "periods"},
    "dstee_cosine": {"bonus_decay": "cosine"},
    "dstee_periods_cosine": {"count": "periods", "bonus_decay": "cosine"},
    "dstee_c3": {"exploration": 3.0},
}
SELECTION_SEED = 100


def settings(quick):
    if quick:
        return {"train_offset": 0, "train_size": 2000, "epochs": 3, "update_freq": 4, "seeds": [0], "sparsities": [0.98],
                "models": ["small_cnn", "mlp"]}
    return {"train_offset": 0, "train_size": 10000, "epochs": 6, "update_freq": 6, "seeds": [0, 1, 2, 3, 4], "sparsities": [0.98, 0.99],
            "models": ["small_cnn", "mlp"]}


def method_of(variant):
    return "dstee" if variant.startswith("dstee") else variant


def confidence_interval(values, level=0.95):
    """Student-t interval of the mean of a few paired differences."""
    from scipy import stats

    half = stats.t.ppf((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return statistics.mean(values) - half, statistics.mean(values) + half


def runs_by_seed(runs, model, sparsity, variant):
    """{seed: run} of one method on one model at one sparsity."""
    return {r["seed"]: r for r in runs if (r["model"], r["sparsity"], r["variant"]) == (model, sparsity, variant)}


def paired_table(runs, variants):
    """Mean accuracy per method, and each method minus RigL paired by seed."""
    lines = [
        "| model | sparsity | method | test accuracy % (mean +- std, n) | minus RigL per seed (mean +- std; 95% CI; seeds ahead) | coverage |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["model"], r["sparsity"]) for r in runs})
    for model, sparsity in keys:
        for variant in variants:
            group = runs_by_seed(runs, model, sparsity, variant)
            if not group:
                continue
            accs = [100 * r["test_accuracy"] for r in group.values()]
            paired = ""
            if variant != "rigl":
                rigl = runs_by_seed(runs, model, sparsity, "rigl")
                diffs = [100 * (group[s]["test_accuracy"] - rigl[s]["test_accuracy"]) for s in sorted(group) if s in rigl]
                if diffs:
                    ahead = sum(d > 0 for d in diffs)
                    paired = f"{', '.join(f'{d:+.2f}' for d in diffs)} ({statistics.mean(diffs):+.2f} +- {spread(diffs):.2f}; "
                    if len(diffs) > 1:
                        low, high = confidence_interval(diffs)
                        paired += f"95% CI {low:+.2f} to {high:+.2f}; "
                    paired += f"{ahead}/{len(diffs)})"
            coverage = statistics.mean(r["coverage"] for r in group.values())
            lines.append(
                f"| {model} | {sparsity} | {variant} | {statistics.mean(accs):.2f} +- {spread(accs):.2f} ({len(accs)}) | "
                f"{paired} | {coverage:.3f} |"
            )
    return "\n".join(lines)


def plot(runs, variants, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = sorted({(r["model"], r["sparsity"]) for r in runs})
    fig, axes = plt.subplots(2, len(panels), figsize=(4.5 * len(panels), 6), squeeze=False)
    for column, (model, sparsity) in enumerate(panels):
        for variant, style in zip(variants, ("-", "--", ":", "-.", (0, (1, 4)))):
            group = runs_by_seed(runs, model, sparsity, variant).values()
            if not group:
                continue
            for row, key in enumerate(("val_accuracy", "coverage")):
                curves = [r["curves"][key] for r in group]
                mean = [statistics.mean(values) for values in zip(*curves)]
                axes[row][column].plot(range(1, len(mean) + 1), mean, linestyle=style, label=f"{variant} ({len(group)} seeds)")
        axes[0][column].set_title(f"{model}, sparsity {sparsity}")
        axes[0][column].set_ylabel("test accuracy (2k images)")
        axes[1][column].set_ylabel("coverage")
        axes[1][column].set_xlabel("epoch")
        for row in range(2):
            axes[row][column].legend(fontsize="small")
            axes[row][column].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", choices=sorted(BUILDERS))
    parser.add_argument("--variants", nargs="+", choices=["set", "rigl", *VARIANTS])
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--sparsities", type=float, nargs="+")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--train-size", type=int)
    parser.add_argument("--update-freq", type=int)
    parser.add_argument("--train-offset", type=int, help="first training image (default 0; 10000: the other half)")
    parser.add_argument("--out", help="result file (.json; the table and plot go beside it)")
    args = parser.parse_args()
    setup = settings(args.quick)
    for key in setup:
        if getattr(args, key) is not None:
            setup[key] = getattr(args, key)
    data = load_cifar10(train_size=setup["train_size"], train_offset=setup["train_offset"])
    out = args.out or os.path.join(RESULTS, "exploration_regimes" + ("_quick" if args.quick else "") + ".json")
    stem = os.path.splitext(out)[0]
    report = {
        "command": " ".join(["python benchmarks/exploration_regimes.py", *sys.argv[1:]]),
        "backend": keras.backend.backend(),
        "machine": machine("cores"),
        **setup,
        "runs": [],
    }
    continue_report(out, report, ("backend", "train_offset", "train_size", "epochs", "update_freq", "models"))

    def run(model, variant, sparsity, seed):
        for r in report["runs"]:
            if (r["model"], r["variant"], r["sparsity"], r["seed"]) == (model, variant, sparsity, seed):
                return r
        result = train_cifar(
            method_of(variant), sparsity, seed, setup["epochs"], data, batch_size=64,
            update_freq=setup["update_freq"], model=model, curves=True, **VARIANTS.get(variant, {}),
        )
        result["variant"] = variant
        report["runs"].append(result)
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps({k: v for k, v in result.items() if k != "curves"}), flush=True)
        return result

    selection = "none (--variants given)"
    variants = args.variants
    if variants is None:
        # 1. Selection on a held-out seed, at the first sparsity.
        candidates = [v for v in VARIANTS if v != "dstee"]
        scores = {v: 0.0 for v in candidates}
        for model in setup["models"]:
            for variant in candidates:
                scores[variant] += run(model, variant, setup["sparsities"][0], SELECTION_SEED)["test_accuracy"]
        best = max(candidates, key=lambda v: scores[v])
        report["best_variant"] = best
        variants = ["set", "rigl", "dstee", best]
        selection = ", ".join(f"{v} {100 * scores[v] / len(setup['models']):.2f}" for v in candidates)
        selection = f"seed {SELECTION_SEED}, sparsity {setup['sparsities'][0]}, mean accuracy % over models: {selection}; best: {best}"
    # 2. The table.
    for seed in setup["seeds"]:
        for model in setup["models"]:
            for sparsity in setup["sparsities"]:
                for variant in variants:
                    run(model, variant, sparsity, seed)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    table_runs = [
        r for r in report["runs"]
        if r["seed"] in setup["seeds"] and r["variant"] in variants and r["model"] in setup["models"]
    ]
    text = (
        f"{report['command']}: {setup['train_size']} images (from image {setup['train_offset']}), "
        f"{setup['epochs']} epochs, batch 64, "
        f"masks updated every {setup['update_freq']} steps until 75% of training; backend {report['backend']}, "
        f"{report['machine']}\n\nSelection: {selection}\n\n" + paired_table(table_runs, variants)
    )
    plot(table_runs, variants, stem + ".png")
    write_table(stem + ".md", text)


if __name__ == "__main__":
    main()
