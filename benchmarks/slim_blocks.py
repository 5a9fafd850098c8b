"""`slim` on a block-sparse MLP: size and TFLite latency of the unslimmed
file, the slimmed one (whole aligned blocks cut) and, for comparison, a slim
that cuts every silent unit even inside blocks (the rule of 0.2).

    python benchmarks/slim_blocks.py          # on a quiet machine, TensorFlow backend

Structure (latency depends on it only): `mlp_cifar` (3072-1024-1024-1024-10)
masked at 98 % with (16, 1) blocks (ERK, `SparseOptimizer(method="static")`,
seed 0), then 10 % of each hidden layer's units silenced (their fan-in set to
0, as units die in training). Files: float32 and full int8 (calibrated on 64
random inputs), default interpreter, batch 1, 1 thread; the four files of a
kind alternated in one process, median of `--runs`, with the unslimmed file
twice (A/A). Writes `benchmarks/results/slim_blocks.json`.
"""

import argparse
import json
import os
import tempfile

import keras
import numpy as np
from common import RESULTS
from inference_latency import alternated_latency

import keras_dstee
from keras_dstee.structure import slimming


def block_sparse_mlp():
    keras.utils.set_random_seed(0)
    model = keras_dstee.models.mlp_cifar(10)
    densities = keras_dstee.layer_densities(model, 0.98)
    optimizer = keras_dstee.SparseOptimizer(
        keras.optimizers.SGD(), densities, method="static", seed=0, block_size=(16, 1)
    )
    optimizer.build(model.trainable_variables)
    optimizer.install()
    rng = np.random.default_rng(0)
    for layer in [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][:-1]:
        kernel = keras.ops.convert_to_numpy(layer.kernel).copy()
        kernel[:, rng.choice(layer.units, layer.units // 10, replace=False)] = 0.0
        layer.kernel.assign(kernel)
    return model


def slim_cutting_inside_blocks(model):
    rule = slimming.whole_blocks
    slimming.whole_blocks = lambda group, gone: gone
    try:
        return keras_dstee.slim(model)
    finally:
        slimming.whole_blocks = rule


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=300)
    args = p.parse_args()
    model = block_sparse_mlp()
    variants = [
        ("unslimmed", model),
        ("unslimmed (A/A)", model),
        ("slim (whole blocks)", keras_dstee.slim(model)),
        ("slim cutting inside blocks", slim_cutting_inside_blocks(model)),
    ]
    x = np.random.default_rng(1).normal(size=(64, 32, 32, 3)).astype("float32")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind, options in [("float32", {}), ("full int8", {"quantize": "int8", "representative_data": x})]:
            files = []
            for i, (name, m) in enumerate(variants):
                report = keras_dstee.export_tflite(m, os.path.join(folder, f"{i}.tflite"), **options)
                files.append((name, m, report))
            times = alternated_latency([r["path"] for _, _, r in files], threads=1, runs=args.runs)
            for (name, m, report), seconds in zip(files, times):
                units = [layer.units for layer in m.layers if isinstance(layer, keras.layers.Dense)]
                rows.append({"file": kind, "model": name, "units": units, "bytes": report["bytes"],
                             "ms": 1e3 * seconds, "vs_unslimmed": seconds / times[0]})
    with open(os.path.join(RESULTS, "slim_blocks.json"), "w") as f:
        json.dump({"runs": args.runs, "rows": rows}, f, indent=1)
    print("| file | model | Dense units | KB | latency ms | vs unslimmed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['file']} | {r['model']} | {r['units']} | {r['bytes'] / 1e3:.1f} | {r['ms']:.4f} | {r['vs_unslimmed']:.2f}x |")


if __name__ == "__main__":
    main()
