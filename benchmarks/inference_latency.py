"""TFLite latency, file size and accuracy of dense vs DST-EE-trained sparse
models, unstructured and block-sparse, on real CIFAR-10.

    python benchmarks/inference_latency.py              # the full study, ~1.5 h on 2 cores
    python benchmarks/inference_latency.py --quick      # 2k images, 1 epoch, 1 seed (< 5 min)
    python benchmarks/inference_latency.py --phase train    # then, on a quiet machine:
    python benchmarks/inference_latency.py --phase latency

Models: `keras_dstee.models.mlp_cifar` (3072-1024-1024-1024-10, 20k images,
10 epochs, seeds 0 and 1) and a small MLP-Mixer (every multiply-add but the
patch embedding in `Dense` layers; 10k images, 3 epochs, seed 0: it trains
10x slower). Variants: dense; DST-EE at sparsity 0.9 and 0.98,
unstructured and with `block_size=(4, 1)` (TFLite's sparse FullyConnected
pattern). Recipe: AdamW (lr 2e-3, cosine, weight decay 0.05), batch 128,
random flips and 4-pixel translations, masks updated every 100 steps until
75% of training; the Mixer's patch embedding stays dense (`dense_first`).

Latency: float32 `.tflite` files (sparse format for the sparse variants), run
with ai-edge-litert at batch 1 with 1 and 2 threads. The dense model, a
second copy of it (the A/A control: dense against itself) and the variant
are alternated in one process after a warm-up, `--runs` invocations each;
the table shows the median latency and the ratio to dense. Trained models,
results and the tables go to `benchmarks/results/inference_latency[_quick]/`;
re-running skips what is there (accuracy of every seed; latency of seed 0).
"""

import argparse
import json
import os
import statistics
import time

import keras
import numpy as np
from common import RESULTS
from common import load_cifar10
from common import machine
from common import write_table

import keras_dstee

VARIANTS = [("dense", 0.0, None)] + [
    ("dstee", s, b) for s in (0.9, 0.98) for b in (None, (4, 1))
]


def _mlp(x, hidden, name):
    units = x.shape[-1]
    x = keras.layers.Dense(hidden, activation="gelu", name=f"{name}_fc1")(x)
    return keras.layers.Dense(units, name=f"{name}_fc2")(x)


def mlp_mixer_cifar(
    num_classes=10,
    input_shape=(32, 32, 3),
    patch_size=4,
    hidden=128,
    tokens_mlp=64,
    channels_mlp=512,
    depth=4,
    width=1.0,
    name="mlp_mixer_cifar",
):
    """A small MLP-Mixer (Tolstikhin et al., 2021) for CIFAR.

    A patch embedding (a `Conv2D` with stride `patch_size`), `depth` mixer
    blocks, each a token-mixing MLP (across the patches) and a
    channel-mixing MLP (across the features), both `Dense` with layer norm
    and a residual connection, then global average pooling and a `Dense`
    classifier. Besides the patch embedding every multiply-add is in a
    `Dense` layer, but each processes 64 (or 128) rows at once even at batch
    1. Defaults: 64 patches of 4x4, 128 features, 4 blocks, 0.57M parameters.
    """
    hidden, tokens_mlp, channels_mlp = (max(4, round(n * width / 4) * 4) for n in (hidden, tokens_mlp, channels_mlp))
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(hidden, patch_size, strides=patch_size, name="patch_embedding")(inputs)
    patches = x.shape[1] * x.shape[2]
    x = keras.layers.Reshape((patches, hidden), name="patches")(x)
    for i in range(depth):
        y = keras.layers.LayerNormalization(name=f"block{i}_norm1")(x)
        y = keras.layers.Permute((2, 1), name=f"block{i}_to_tokens")(y)
        y = _mlp(y, tokens_mlp, f"block{i}_token_mix")
        y = keras.layers.Permute((2, 1), name=f"block{i}_to_channels")(y)
        x = keras.layers.Add(name=f"block{i}_add1")([x, y])
        y = keras.layers.LayerNormalization(name=f"block{i}_norm2")(x)
        y = _mlp(y, channels_mlp, f"block{i}_channel_mix")
        x = keras.layers.Add(name=f"block{i}_add2")([x, y])
    x = keras.layers.LayerNormalization(name="head_norm")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


MODELS = {"mlp": keras_dstee.models.mlp_cifar, "mixer": mlp_mixer_cifar}


def variant_name(method, sparsity, block):
    if method == "dense":
        return "dense"
    return f"{method}_{sparsity}_{'block4x1' if block else 'unstructured'}"


def train(model_name, variant, seed, data, epochs, batch_size=128):
    """Trains one variant; returns the model (stripped) and its results."""
    method, sparsity, block = variant
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(seed)
    model = MODELS[model_name]()
    # Augmentation outside the exported model.
    augment = keras.Sequential(
        [keras.layers.RandomFlip("horizontal"), keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant")]
    )
    trainer = keras.Sequential([keras.Input((32, 32, 3)), augment, model])
    steps = int(np.ceil(len(x_train) / batch_size)) * epochs
    trainer.compile(
        optimizer=keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(2e-3, steps), weight_decay=0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    callbacks = []
    if method != "dense":
        callbacks.append(
            keras_dstee.SparseTraining(
                method, sparsity=sparsity, seed=seed, block_size=block, dense_first=model_name == "mixer"
            )
        )
    start = time.time()
    trainer.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=callbacks)
    seconds = time.time() - start
    _, accuracy = trainer.evaluate(x_test, y_test, batch_size=500, verbose=0)
    stats = callbacks[0].optimizer.sparsity_stats() if callbacks else {"sparsity": 0.0, "coverage": 1.0}
    keras_dstee.strip(trainer)
    return model, {
        "model": model_name,
        "variant": variant_name(*variant),
        "sparsity": sparsity,
        "block_size": block,
        "seed": seed,
        "epochs": epochs,
        "train_images": len(x_train),
        "test_accuracy": float(accuracy),
        "actual_sparsity": stats["sparsity"],
        "coverage": stats["coverage"],
        "train_seconds": seconds,
    }


def _interpreter(path, threads):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    (inputs,) = interpreter.get_input_details()
    interpreter.set_tensor(inputs["index"], np.random.default_rng(0).normal(size=inputs["shape"]).astype("float32"))
    return interpreter


def alternated_latency(paths, threads, runs, warmup=20):
    """Median seconds of one invocation of each file, the interpreters
    alternated so that machine noise hits all of them alike."""
    interpreters = [_interpreter(p, threads) for p in paths]
    for _ in range(warmup):
        for interpreter in interpreters:
            interpreter.invoke()
    times = [[] for _ in paths]
    for _ in range(runs):
        for interpreter, row in zip(interpreters, times):
            start = time.perf_counter()
            interpreter.invoke()
            row.append(time.perf_counter() - start)
    return [statistics.median(row) for row in times]


def export(model, folder, name, sparse):
    path = os.path.join(folder, f"{name}.tflite")
    report = keras_dstee.export_tflite(model, path, sparse=sparse, optimize_for="latency" if sparse else "size")
    return {
        "tflite_bytes": report["bytes"],
        "accelerated_layers": report.get("accelerated", 0),
        "prunable_layers": len(report.get("layers", [])),
    }


def latency_table(rows):
    lines = [
        "| model | variant | accuracy % (seeds) | file KB | layers on sparse kernel | "
        "1 thread: ms, ratio (A/A) | 2 threads: ms, ratio (A/A) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = []
        for t in ("1", "2"):
            lat = r["latency"][t]
            cells.append(f"{1e3 * lat['variant']:.3f}, **{lat['ratio']:.2f}x** ({lat['aa']:.2f})")
        accs = r["accuracies"]
        spread = f" +- {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        lines.append(
            f"| {r['model']} | {r['variant']} | {statistics.mean(accs):.2f}{spread} ({len(accs)}) | "
            f"{r['tflite_bytes'] / 1024:,.0f} | {r['accelerated_layers']}/{r['prunable_layers']} | "
            f"{cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines)


# Per model: (training images, epochs, seeds).
RECIPES = {"mlp": (20000, 10, [0, 1]), "mixer": (10000, 3, [0])}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=["mlp", "mixer"], choices=sorted(MODELS))
    p.add_argument("--phase", choices=("all", "train", "latency"), default="all")
    p.add_argument("--runs", type=int, default=200, help="timed invocations per interpreter")
    p.add_argument("--quick", action="store_true", help="2k images, 1 epoch, seed 0, 150 runs")
    args = p.parse_args()
    recipes = {m: (2000, 1, [0]) if args.quick else RECIPES[m] for m in args.models}
    if args.quick:
        args.runs = 150
    folder = os.path.join(RESULTS, "inference_latency" + ("_quick" if args.quick else ""))
    os.makedirs(folder, exist_ok=True)
    results_path = os.path.join(folder, "results.json")
    results = json.load(open(results_path)) if os.path.isfile(results_path) else {"runs": {}, "latency": {}}

    def save():
        with open(results_path, "w") as f:
            json.dump(results, f, indent=1)

    # 1. Train every variant and seed (accuracy), export seed 0's files.
    for model_name in args.models if args.phase != "latency" else []:
        images, epochs, seeds = recipes[model_name]
        data = load_cifar10(train_size=images)
        for variant in VARIANTS:
            name = variant_name(*variant)
            for seed in seeds:
                key = f"{model_name}/{name}/{seed}"
                if key in results["runs"]:
                    continue
                model, run = train(model_name, variant, seed, data, epochs)
                if seed == seeds[0]:
                    run.update(export(model, folder, f"{model_name}_{name}", sparse=variant[0] != "dense"))
                    if variant[0] == "dense":
                        keras_dstee.export_tflite(model, os.path.join(folder, f"{model_name}_dense_copy.tflite"), sparse=False)
                results["runs"][key] = run
                save()
                print(json.dumps(run), flush=True)

    if args.phase == "train":
        return
    # 2. Latency, each sparse variant alternated with dense and its copy.
    for model_name in args.models:
        dense = os.path.join(folder, f"{model_name}_dense.tflite")
        copy = os.path.join(folder, f"{model_name}_dense_copy.tflite")
        for variant in VARIANTS:
            name = variant_name(*variant)
            key = f"{model_name}/{name}"
            if key in results["latency"]:
                continue
            entry = {}
            for threads in (1, 2):
                base, control, this = alternated_latency(
                    [dense, copy, os.path.join(folder, f"{model_name}_{name}.tflite")], threads, args.runs
                )
                entry[str(threads)] = {"dense": base, "variant": this, "ratio": this / base, "aa": control / base}
            results["latency"][key] = entry
            save()
            print(key, json.dumps(entry), flush=True)

    rows = []
    for model_name in args.models:
        for variant in VARIANTS:
            name = variant_name(*variant)
            seeds = [results["runs"][f"{model_name}/{name}/{s}"] for s in recipes[model_name][2]]
            first = seeds[0]
            rows.append(
                {
                    "model": f"{model_name} ({first['train_images'] // 1000}k x {first['epochs']} ep)",
                    "variant": name,
                    "accuracies": [100 * r["test_accuracy"] for r in seeds],
                    "tflite_bytes": first["tflite_bytes"],
                    "accelerated_layers": first["accelerated_layers"],
                    "prunable_layers": first["prunable_layers"],
                    "latency": results["latency"][f"{model_name}/{name}"],
                }
            )
    text = (
        f"backend {keras.backend.backend()}, {machine()}; latency: median of {args.runs} alternated runs, batch 1, float32\n\n"
        + latency_table(rows)
    )
    write_table(os.path.join(folder, "table.md"), text)


if __name__ == "__main__":
    main()
