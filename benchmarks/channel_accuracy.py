"""Accuracy cost of channel-level sparsity: DST-EE unstructured against
DST-EE with `channel_sparsity` 0.3 and 0.5 at the same weight budget, and
RigL with channels, on real CIFAR-10, seeds paired.

    KERAS_BACKEND=tensorflow python benchmarks/channel_accuracy.py
    KERAS_BACKEND=tensorflow python benchmarks/channel_accuracy.py --models small_cnn --sparsities 0.9
    KERAS_BACKEND=tensorflow python benchmarks/channel_accuracy.py --variants 0 3 2 5 --recalibrate

Recipe (`common.train_cifar`): 10k training images, 6 epochs, SGD momentum
0.9 nesterov, lr 0.05 cosine, weight decay 5e-4, batch 128; masks (and
channels) updated every 25 steps until 75 % of training; the "channels from
25 %" variants wait until then (`channel_begin=0.25`) before channels go.
Models: the small CNN of `common.py`, VGG-19 and ResNet-50 at a quarter of
their width (`vgg19_quarter`, `resnet50_quarter`).
A control tells capacity from the removal itself: the model at half width
(what channels 0.5 in every layer leaves) trained unstructured from scratch
with the same number of weights.
Every run is written to `benchmarks/results/channel_accuracy.json` as it
finishes (re-running continues); the table pairs each variant with DST-EE
unstructured of the same model, sparsity and seed. With `--recalibrate`,
every model's BatchNormalization statistics are re-estimated after training
(`keras_dstee.recalibrate_batch_norm`, 2,048 training images), and the runs go
to `channel_accuracy_recalibrated.json` (the accuracy before it is kept as
`test_accuracy_stale_bn`).
"""

import argparse
import json
import math
import os
import statistics

import keras
from common import BUILDERS
from common import RESULTS
from common import load_cifar10
from common import spread
from common import train_cifar
from common import write_table

from keras_dstee.layers import prunable_variables

OUT = os.path.join(RESULTS, "channel_accuracy.json")
# (method, channel_sparsity, min_channels, channel_begin[, channel_end,
# shrink]); the first is the reference of the pairs. min_channels=1.0 keeps
# the same fraction of every layer (the fast structure of
# benchmarks/channel_latency.py). HALF: the control. `channel_end` front-loads
# the channels; `shrink=True` trains the same computation on the smaller
# model (what it costs: the wall time).
HALF = ("dstee", "half_width", None, None)
DENSE = ("dense", None, None, None)
EARLY = ("dstee", 0.5, 1.0, None, 0.25, False)
SHRINK = ("dstee", 0.5, 1.0, None, 0.25, True)
VARIANTS = [
    ("dstee", 0.0, 0.2, None), ("dstee", 0.3, 0.2, None), ("dstee", 0.5, 0.2, None), ("dstee", 0.5, 1.0, None),
    ("rigl", 0.5, 0.2, None), HALF, ("dstee", 0.5, 1.0, 0.25), ("dstee", 0.5, 0.2, 0.25), EARLY, SHRINK, DENSE,
]
# Each model at half its width.
HALF_WIDTH = {"small_cnn": "small_cnn_half", "vgg19_quarter": "vgg19_eighth", "resnet50_quarter": "resnet50_eighth"}


def key(model, sparsity, method, channels, seed, min_channels=0.2, channel_begin=None, channel_end=None,
        shrink=False):
    uniform = "/uniform" if min_channels == 1.0 else ""
    begin = f"/from{channel_begin}" if channel_begin is not None else ""
    end = (f"/to{channel_end}" if channel_end is not None else "") + ("/shrink" if shrink else "")
    return f"{model}/{sparsity}/{method}/{channels}{uniform}{begin}{end}/{seed}"


def _variant(run):
    variant = (run["method"], run["channels"], run.get("min_channels", 0.2), run.get("channel_begin"))
    if run["method"] == "dense":
        return DENSE
    if run.get("channel_end") is not None:
        return variant + (run["channel_end"], bool(run.get("shrink")))
    return variant


def _kernel_weights(name):
    """How many weights the masks of model `name` cover."""
    return sum(math.prod(v.shape) for v in prunable_variables(BUILDERS[name]()))


def half_width_sparsity(model, sparsity):
    """The sparsity at which `model` at half width holds as many weights as
    `model` at `sparsity`."""
    return 1.0 - (1.0 - sparsity) * _kernel_weights(model) / _kernel_weights(HALF_WIDTH[model])


def train_half_width(model, sparsity, seed, epochs, data, recalibrate=False):
    """The control: `model` at half width, unstructured DST-EE from scratch,
    with the weight budget of `model` at `sparsity`."""
    half = HALF_WIDTH[model]
    run = train_cifar("dstee", half_width_sparsity(model, sparsity), seed, epochs, data, update_freq=25, model=half,
                      recalibrate=recalibrate)
    run.update(model=model, trained_model=half, trained_sparsity=run["sparsity"], sparsity=sparsity)
    return run


def _name(variant):
    """A variant in words, for the table and the plot."""
    if variant == HALF:
        return "control: dstee unstructured at half width, same weights"
    if variant == DENSE:
        return "dense"
    method, channels, min_channels, channel_begin = variant[:4]
    name = f"{method}" + (f", channels {channels}" if channels else " unstructured")
    name += ", every layer (min_channels=1)" if min_channels == 1.0 else ""
    name += f", channels from {channel_begin:.0%}" if channel_begin is not None else ""
    name += f", channels by {variant[4]:.0%}" if len(variant) > 4 else ""
    return name + (", shrink=True" if len(variant) > 5 and variant[5] else "")


def table(runs):
    # Recalibrated runs also show the accuracy with the statistics training left.
    stale = all("test_accuracy_stale_bn" in r for r in runs.values())
    lines = [
        "| model | sparsity | variant | test accuracy % (mean +- std) | - DST-EE unstructured, per seed | mean (seeds) "
        "| live channels | train s (mean) |" + (" before recalibrating: mean, paired mean |" if stale else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if stale else ""),
    ]
    combos = sorted({(r["model"], r["sparsity"]) for r in runs.values()})
    for model, sparsity in combos:
        same = [r for r in runs.values() if (r["model"], r["sparsity"]) == (model, sparsity)]
        reference = {r["seed"]: r for r in same if _variant(r) == VARIANTS[0]}
        for variant in VARIANTS:
            method, channels, min_channels, channel_begin = variant[:4]
            group = sorted((r for r in same if _variant(r) == variant), key=lambda r: r["seed"])
            if not group:
                continue
            accs = [100 * r["test_accuracy"] for r in group]
            diffs = [100 * (r["test_accuracy"] - reference[r["seed"]]["test_accuracy"]) for r in group if r["seed"] in reference]
            live = [r["live_channels"] for r in group if r.get("live_channels") is not None]
            name = _name(variant)
            if channels not in (None, 0.0, "half_width") and not all(r.get("swap_fix") for r in group):
                name += " (before the swap fix, CHANGELOG)"
            paired = ", ".join(f"{d:+.2f}" for d in diffs) if variant != VARIANTS[0] else "-"
            mean = f"{statistics.mean(diffs):+.2f} ({len(diffs)})" if paired != "-" and diffs else "-"
            alive = f"{statistics.mean(live) if live else 1.0:.2f}" if variant != HALF else "(0.50)"
            seconds = statistics.mean(r["train_seconds"] for r in group)
            before = ""
            if stale:
                old = {r["seed"]: 100 * r["test_accuracy_stale_bn"] for r in group}
                old_diffs = [old[s] - 100 * reference[s]["test_accuracy_stale_bn"] for s in old if s in reference]
                before = f" {statistics.mean(old.values()):.2f}, " + (
                    f"{statistics.mean(old_diffs):+.2f} |" if variant != VARIANTS[0] and old_diffs else "- |"
                )
            lines.append(
                f"| {model} | {sparsity} | {name} | {statistics.mean(accs):.2f} +- {spread(accs):.2f} | {paired} | {mean} "
                f"| {alive} | {seconds:.0f} |"
                + before
            )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["small_cnn", "vgg19_quarter"], choices=sorted(HALF_WIDTH))
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.98])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--variants", nargs="+", type=int, default=list(range(len(VARIANTS))),
                   help="indices into VARIANTS to run (default: all)")
    p.add_argument("--recalibrate", action="store_true", help="re-estimate BatchNormalization statistics after training")
    args = p.parse_args()
    out = OUT.replace(".json", "_recalibrated.json") if args.recalibrate else OUT
    runs = json.load(open(out)) if os.path.isfile(out) else {}
    data = load_cifar10(train_size=10000)
    for model in args.models:
        for sparsity in args.sparsities:
            for seed in args.seeds:
                for variant in [VARIANTS[i] for i in args.variants]:
                    method, channels, min_channels, channel_begin = variant[:4]
                    channel_end, shrink = variant[4:6] if len(variant) > 4 else (None, False)
                    k = key(model, sparsity, method, channels, seed, min_channels, channel_begin, channel_end, shrink)
                    if k in runs:
                        continue
                    extra = {"channel_sparsity": channels, "min_channels": min_channels} if channels else {}
                    if channel_begin is not None:
                        extra["channel_begin"] = channel_begin
                    if channel_end is not None:
                        extra.update(channel_end=channel_end, shrink=shrink)
                    if variant == HALF:
                        run = train_half_width(model, sparsity, seed, args.epochs, data, args.recalibrate)
                    else:
                        run = train_cifar(method, sparsity, seed, args.epochs, data, update_freq=25, model=model,
                                          recalibrate=args.recalibrate, **extra)
                    run.update(channels=channels, min_channels=min_channels, channel_begin=channel_begin,
                               channel_end=channel_end, backend=keras.backend.backend())
                    # Channel runs since a kernel swaps a fraction of the weights it keeps.
                    run["swap_fix"] = True
                    if variant == DENSE:
                        run["sparsity"] = sparsity  # listed beside the sparse runs it is compared with
                    runs[k] = run
                    with open(out, "w") as f:
                        json.dump(runs, f, indent=1)
                    print(k, f"{run['test_accuracy']:.4f}", flush=True)
    write_table(out.replace(".json", ".md"), table(runs))
    plot(runs, out.replace(".json", ".png"))


def plot(runs, path):
    """Test accuracy against training wall time, one point per variant
    (mean over seeds), a panel per model and sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r["model"], r["sparsity"]) for r in runs.values()})
    figure, axes = plt.subplots(1, len(combos), figsize=(5 * len(combos), 5.5), squeeze=False)
    colours = plt.get_cmap("tab20")
    shown = {}
    for axis, (model, sparsity) in zip(axes[0], combos):
        for number, variant in enumerate(VARIANTS):
            group = [r for r in runs.values() if _variant(r) == variant and (r["model"], r["sparsity"]) == (model, sparsity)]
            if group:
                shown[number] = axis.scatter(statistics.mean(r["train_seconds"] for r in group),
                                             100 * statistics.mean(r["test_accuracy"] for r in group),
                                             color=colours(number), s=40)
        axis.set(title=f"{model}, sparsity {sparsity}", xlabel="training wall time (s, mean of seeds)",
                 ylabel="test accuracy % (mean of seeds)")
    figure.legend([shown[n] for n in sorted(shown)], [_name(VARIANTS[n]) for n in sorted(shown)],
                  loc="lower center", ncol=3, fontsize=7)
    figure.tight_layout(rect=(0, 0.18, 1, 1))
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
