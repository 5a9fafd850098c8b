"""What shrinking saves on training: wall time and peak memory of a whole
`fit` (compiles, rebuilds and recompiles included) with
`DSTEE(sparsity=0.9, channel_sparsity=0.5, min_channels=1.0,
channel_end=0.25, shrink=True)` against the same model trained dense,
taking turns: dense, shrink, a second dense run (the A/A control) and the
final architecture (the width `channel_sparsity` leaves in every layer)
trained dense from the start, the floor of what shrinking can reach, each
in its own process (so that each has its own peak memory), `--repeats`
times; the medians of the `fit` wall times are compared.

The whole schedule is compressed into `--epochs` x `--steps-per-epoch`
steps (full-width steps are seconds each on a CPU): the channels reach
their target a quarter into the run, the model is rebuilt at epoch ends
(`schedule.shrink_due`), and the rest of the run trains small. Peak memory
is the run's process's peak resident memory after the last rebuild (Linux
`VmHWM`, reset through `/proc/self/clear_refs`), against the dense run's
over the same epochs, and over the whole run (`peak_mem_ratio_run`): on a
CPU it includes the runtime and the compiler's memory (a rebuild
recompiles). `state_ratio` compares what training holds at the end:
weights, statistics and optimizer state, the masks and activity counters
of the sparse run included. `equivalence` is the largest difference between the
weights of a shrunk and a masked run of a small conv net (same seed and
data order), the figure `tests/test_shrinking.py` holds to 1e-5.

    KERAS_BACKEND=jax python benchmarks/training_cost.py --model vgg19_cifar
    python benchmarks/training_cost.py --table    # the markdown table of all runs
    KERAS_BACKEND=tensorflow python benchmarks/training_cost.py --divergence vgg19_quarter --epochs 6
    KERAS_BACKEND=torch python benchmarks/training_cost.py --step-costs --steps-per-epoch 20 --repeats 5

Writes (merges into) `benchmarks/results/training_cost.json`, one entry
per backend, model and run length.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

OUT = os.path.join(common.RESULTS, "training_cost.json")
SETTINGS = dict(sparsity=0.9, channel_sparsity=0.5, min_channels=1.0, channel_end=0.25, end=0.75)


def _peak_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def compiled_model(model_name, width):
    """`model_name` (a `keras_dstee.models` builder or "small_cnn") at
    `width`, compiled for these runs (SGD with momentum)."""
    import keras

    import keras_dstee

    build = common.small_cnn if model_name == "small_cnn" else getattr(keras_dstee.models, model_name)
    model = build(num_classes=10, width=width)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def run(model_name, width, x, y, batch, epochs, shrink, reset_at, tf_data=False):
    """One whole `fit`: its seconds, peak KiB from epoch `reset_at` on and
    over the run, the rebuilds, the final training loss and each epoch's
    seconds. `tf_data`: the data as a batched `tf.data.Dataset` rather than
    NumPy arrays."""
    import keras
    import numpy as np

    import keras_dstee

    keras.utils.set_random_seed(0)
    model = compiled_model(model_name, width)
    callbacks = []
    sparse = None
    if shrink:
        # One mask update an epoch: already far more often than a real run's.
        sparse = keras_dstee.DSTEE(shrink=True, seed=0, update_freq=max(1, len(x) // batch), **SETTINGS)
        callbacks.append(sparse)
    peak, epoch_s = {"before": 0}, []

    class Peak(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_s.append(time.perf_counter() - self.started)
            if epoch + 1 == reset_at:
                peak["before"] = _peak_kib() or 0
                peak["reset"] = _peak_reset()

    data = dict(x=x, y=y, batch_size=batch, shuffle=False)
    if tf_data:
        import tensorflow as tf

        data = dict(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(2))
    start = time.perf_counter()
    history = model.fit(**data, epochs=epochs, verbose=0, callbacks=[*callbacks, Peak()])
    seconds = time.perf_counter() - start
    rebuilds = [] if sparse is None else sparse.rebuilds
    after = _peak_kib() if peak.get("reset") else None
    # What training holds at the end: weights, statistics and optimizer
    # state (masks and counters included), whatever the runtime keeps.
    state = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize
                for v in [*model.weights, *model.optimizer.variables])
    return {
        "state_bytes": int(state),
        "seconds": seconds,
        "peak_after_kib": after,
        "peak_run_kib": None if after is None else max(after, peak["before"]),
        "rebuilds": rebuilds,
        "loss": history.history["loss"][-1],
        "epoch_s": epoch_s,
    }


def run_in_child(args, name, reset_at):
    """`run` in a fresh process (its own peak memory); returns its result."""
    command = [sys.executable, os.path.abspath(__file__), "--one", name, "--reset-at", str(reset_at),
               "--model", args.model, "--width", str(args.width), "--batch", str(args.batch),
               "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch),
               *(["--tf-data"] if args.tf_data else [])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def masked_and_shrunk(make_model, x, y, epochs, batch_size, **settings):
    """A masked and a shrunk `DSTEE` run of `make_model()` (same seed and
    data order), both cut to what is alive at the end (a shrunk run may
    still hold a few removed channels, too few to rebuild for): their
    weights as numpy pairs and their per-epoch losses."""
    import keras

    import keras_dstee

    models, losses = [], []
    for shrink in (False, True):
        model = make_model()
        history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=False,
                            callbacks=[keras_dstee.DSTEE(shrink=shrink, **settings)])
        keras_dstee.shrink(model)
        models.append(model)
        losses.append(history.history["loss"])
    pairs = [(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
             for a, b in zip(models[0].weights, models[1].weights)]
    return pairs, losses


def equivalence():
    """Largest weight difference between a shrunk and a masked run of the
    small conv net of `tests/test_shrinking.py`."""
    import numpy as np

    from tests.test_shrinking import conv_bn_model
    from tests.test_shrinking import settings

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(128, 8, 8, 3)).astype("float32"), rng.integers(0, 4, 128)
    pairs, _ = masked_and_shrunk(conv_bn_model, x, y, 6, 16, **settings())
    return max(float(np.abs(a - b).max()) for a, b in pairs)


def divergence(model_name, epochs, images):
    """How far a shrunk run drifts from its masked twin on a real model and
    real images (same seed and data order): per epoch the two training
    losses, and at the end the largest weight difference and the share of
    kernel positions whose zero/nonzero state differs (mask decisions that
    float rounding flipped)."""
    import keras
    import numpy as np

    def make_model():
        keras.utils.set_random_seed(0)
        model = common.BUILDERS[model_name]()
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    (x, y), _ = common.load_cifar10(train_size=images)
    pairs, losses = masked_and_shrunk(make_model, x, y, epochs, 128, seed=0, update_freq=25, **SETTINGS)
    kernels = [(a, b) for a, b in pairs if a.ndim > 1]
    flipped = sum(int(((a != 0) != (b != 0)).sum()) for a, b in kernels) / sum(a.size for a, _ in kernels)
    return {
        "model": model_name,
        "epochs": epochs,
        "images": images,
        "loss_masked": losses[0],
        "loss_shrunk": losses[1],
        "max_weight_difference": max(float(np.abs(a - b).max()) for a, b in pairs),
        "largest_weight": max(float(np.abs(a).max()) for a, _ in pairs),
        "mask_positions_differing": flipped,
    }


def _start_backend():
    """A process's first `fit` also pays for starting the backend: a tiny
    unrelated model's fit takes that, untimed (not the measured model's, whose
    compiled step would then be cached for the dense run only)."""
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    model.fit(np.zeros((8, 4)), np.zeros((8, 2)), epochs=1, verbose=0)


def data(args):
    (x, y), _ = common.load_cifar10(train_size=args.batch * args.steps_per_epoch)
    return x, y


def measure(args):
    import keras

    # Rebuilds happen by the end of the epoch where the channels reach their target.
    reset_at = max(1, round(SETTINGS["channel_end"] * args.epochs) + 1)
    names = ("dense", "shrink", "dense_copy", "final")
    times, last_epoch, epochs = ({name: [] for name in names} for _ in range(3))
    peaks = {"dense": [], "shrink": [], "final": []}
    peaks_run = {"dense": [], "shrink": [], "final": []}
    rebuilds, losses = None, {}
    state_bytes = {"dense": None, "shrink": None}
    for repeat in range(args.repeats):
        for name in names:
            result = run_in_child(args, name, reset_at)
            times[name].append(result["seconds"])
            last_epoch[name].append(result["epoch_s"][-1])
            epochs[name].append(result["epoch_s"])
            losses.setdefault(name, []).append(result["loss"])
            if name in peaks and result["peak_after_kib"]:
                peaks[name].append(result["peak_after_kib"])
                peaks_run[name].append(result["peak_run_kib"])
            if name == "shrink":
                rebuilds = result["rebuilds"]
            if name in state_bytes:
                state_bytes[name] = result.get("state_bytes")
            print(f"repeat {repeat}: {name} {result['seconds']:.1f} s, last epoch {result['epoch_s'][-1]:.2f} s, "
                  f"peak after epoch {reset_at}: {result['peak_after_kib']} KiB, loss {result['loss']:.4f}", flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    entry = {
        "backend": keras.backend.backend(),
        "model": args.model,
        "width": args.width,
        "batch": args.batch,
        "input": "tf.data" if args.tf_data else "numpy",
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "settings": SETTINGS,
        "repeats": args.repeats,
        "machine": common.machine(),
        "dense_s": median["dense"],
        "shrink_s": median["shrink"],
        "ratio": median["shrink"] / median["dense"],
        "aa": median["dense_copy"] / median["dense"],
        # The floor: the architecture shrinking ends with, trained dense
        # from the start (its whole run and its peak memory).
        "final_s": median["final"],
        "final_ratio": median["final"] / median["dense"],
        "final_peak_mem_ratio": _ratio(peaks, "final"),
        # The last epoch alone: steady state after the last rebuild (no compile).
        "last_epoch_ratio": statistics.median(last_epoch["shrink"]) / statistics.median(last_epoch["dense"]),
        "last_epoch_aa": statistics.median(last_epoch["dense_copy"]) / statistics.median(last_epoch["dense"]),
        "times": times,
        "last_epoch_s": last_epoch,
        # Where a run's time goes: each epoch's median seconds (the first
        # compiles, an epoch after a rebuild recompiles).
        "epoch_s": {k: [statistics.median(e) for e in zip(*v)] for k, v in epochs.items()},
        "peak_mem_ratio": _ratio(peaks),
        "peak_mem_ratio_run": _ratio(peaks_run),
        "state_bytes": state_bytes,
        "state_ratio": (state_bytes["shrink"] / state_bytes["dense"]
                        if state_bytes["shrink"] and state_bytes["dense"] else None),
        "rebuilds": rebuilds,
        "final_loss": {k: statistics.median(v) for k, v in losses.items()},
        "equivalence": equivalence(),
    }
    results = []
    if os.path.isfile(args.out):
        with open(args.out) as f:
            results = [r for r in json.load(f) if _setup(r) != _setup(entry)]
    results.append(entry)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps({k: v for k, v in entry.items() if k not in ("times", "rebuilds")}, indent=1))


def _setup(entry):
    """What makes two entries the same measurement (entries from before
    `--tf-data` were fed NumPy arrays)."""
    keys = ("backend", "model", "width", "epochs", "steps_per_epoch", "batch")
    return tuple(entry[k] for k in keys) + (entry.get("input", "numpy"),)


def _ratio(values, name="shrink"):
    if values.get(name) and values["dense"]:
        return statistics.median(values[name]) / statistics.median(values["dense"])
    return None


def table(path):
    with open(path) as f:
        results = json.load(f)
    lines = [
        "| backend | model | width | steps (epochs x steps) | batch | dense s | shrink s | ratio | A/A | "
        "rebuilds | channels left | FLOPs after | last epoch ratio (A/A) | peak RSS after last rebuild | "
        "training state at the end | final architecture trained dense: time, peak RSS | equivalence |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        last = r["rebuilds"][-1] if r["rebuilds"] else None
        channels = f"{last['channels_after'] / last['channels_planned']:.2f}" if last else "-"
        flops = f"{last['flops_after'] / r['rebuilds'][0]['flops_before']:.2f}x" if last else "-"
        memory = f"{r['peak_mem_ratio']:.2f}x" if r["peak_mem_ratio"] else "-"
        state = f"{r['state_ratio']:.2f}x" if r.get("state_ratio") else "-"
        final = (f"{r['final_ratio']:.2f}x, {r['final_peak_mem_ratio']:.2f}x"
                 if r.get("final_ratio") and r.get("final_peak_mem_ratio") else "-")
        lines.append(
            f"| {r['backend']} | {r['model']}{' (tf.data)' if r.get('input') == 'tf.data' else ''} | {r['width']} | {r['epochs'] * r['steps_per_epoch']} "
            f"({r['epochs']} x {r['steps_per_epoch']}) | {r['batch']} | {r['dense_s']:.1f} | {r['shrink_s']:.1f} | "
            f"**{r['ratio']:.2f}x** | {r['aa']:.2f} | {len(r['rebuilds'])} | {channels} | {flops} | "
            f"{r['last_epoch_ratio']:.2f}x ({r['last_epoch_aa']:.2f}) | {memory} | {state} | {final} | "
            f"{r['equivalence']:.1e} |"
        )
    return "\n".join(lines)


def step_costs(model_name, steps, repeats):
    """Seconds per step once shrinking is done, against the final
    architecture trained dense (the floor), its copy (A/A), and the same
    architecture trained sparse without shrinking: each step timed inside
    `fit` (`on_train_batch_end`, the first step left out), so that what
    happens around the steps (TensorFlow's data iterator, callbacks) does
    not count. The models take turns, `repeats` times; medians."""
    import keras
    import numpy as np

    import keras_dstee

    (x, y), _ = common.load_cifar10(train_size=32 * steps)
    final_width = 1 - SETTINGS["channel_sparsity"]
    keras.utils.set_random_seed(0)
    floor, copy, sparse, shrunk = (compiled_model(model_name, w) for w in (final_width, final_width, final_width, 1.0))
    # The schedules run to their end on two batches, so the timed epochs only train.
    schedule = dict(seed=0, update_freq=2, sparsity=SETTINGS["sparsity"], end=0.75)
    sparse.fit(x[:64], y[:64], batch_size=32, epochs=4, verbose=0, callbacks=[keras_dstee.DSTEE(**schedule)])
    callback = keras_dstee.DSTEE(shrink=True, **{**SETTINGS, **schedule})
    shrunk.fit(x[:64], y[:64], batch_size=32, epochs=8, verbose=0, callbacks=[callback])
    models = {"final": floor, "final_copy": copy, "sparse_not_shrunk": sparse, "shrunk": shrunk}

    class Steps(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    for model in models.values():
        model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    seconds = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            timer = Steps()
            model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
            seconds[name].append(float(np.median(np.diff(timer.ends))))
    median = {name: statistics.median(v) for name, v in seconds.items()}
    return {
        "backend": keras.backend.backend(),
        "model": model_name,
        "rebuilds": len(callback.rebuilds),
        "step_s": median,
        "against_final": {name: median[name] / median["final"] for name in models},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vgg19_cifar", choices=["vgg19_cifar", "resnet50_cifar", "small_cnn"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    parser.add_argument("--tf-data", action="store_true",
                        help="feed fit a batched tf.data.Dataset instead of NumPy arrays (needs TensorFlow)")
    parser.add_argument("--divergence", metavar="MODEL", choices=sorted(common.BUILDERS),
                        help="only compare a shrunk and a masked run of MODEL (of benchmarks/common.py) "
                             "on --images CIFAR-10 images for --epochs, and print it")
    parser.add_argument("--images", type=int, default=2560)
    parser.add_argument("--step-costs", action="store_true",
                        help="only time steps inside fit once --model has shrunk, against its final "
                             "architecture trained dense and sparse (--steps-per-epoch steps, --repeats), and print it")
    parser.add_argument("--one", choices=["dense", "shrink", "dense_copy", "final"], help=argparse.SUPPRESS)
    parser.add_argument("--reset-at", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        print(table(args.out))
    elif args.step_costs:
        print(json.dumps(step_costs(args.model, args.steps_per_epoch, args.repeats), indent=1))
    elif args.divergence:
        print(json.dumps(divergence(args.divergence, args.epochs, args.images), indent=1))
    elif args.one:
        x, y = data(args)
        _start_backend()
        # "final": the width that `channel_sparsity` leaves in every layer.
        width = args.width * (1 - SETTINGS["channel_sparsity"]) if args.one == "final" else args.width
        result = run(args.model, width, x, y, args.batch, args.epochs, args.one == "shrink", args.reset_at,
                     args.tf_data)
        print("RESULT " + json.dumps(result))
    else:
        measure(args)


if __name__ == "__main__":
    main()
