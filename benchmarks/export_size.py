"""TFLite file sizes of ResNet-50-CIFAR at 90% and 98% sparsity (ERK).

    python benchmarks/export_size.py

Masks the kernels exactly as sparse training starts (`SparseOptimizer`,
ERK densities), exports with `keras_dstee.export_tflite` and prints the
sparse and dense `.tflite` sizes (raw and gzipped), float32 and full-integer
int8 (calibrated on 100 random inputs: the size does not depend on them).
Writes `benchmarks/results/export_size.json`.
"""

import json
import os
import tempfile

import keras
import numpy as np
from common import RESULTS

import keras_dstee


def main():
    rows = []
    for sparsity in (0.9, 0.98):
        keras.utils.set_random_seed(0)
        model = keras_dstee.models.resnet50_cifar(10)
        optimizer = keras_dstee.SparseOptimizer(
            keras.optimizers.SGD(), keras_dstee.layer_densities(model, sparsity), method="static", seed=0
        )
        optimizer.build(model.trainable_variables)
        optimizer.install()
        report = keras_dstee.summary(model, print_fn=lambda line: None)
        calibration = np.random.default_rng(0).normal(size=(100, 32, 32, 3)).astype("float32")
        with tempfile.TemporaryDirectory() as folder:
            sizes = keras_dstee.export_tflite(model, os.path.join(folder, "m.tflite"))
            int8 = keras_dstee.export_tflite(
                model, os.path.join(folder, "m8.tflite"), quantize="int8", representative_data=calibration
            )
        row = {
            "sparsity": sparsity,
            "kernel_sparsity": report["total"]["sparsity"],
            "sparse_bytes": sizes["bytes"],
            "dense_bytes": sizes["dense_bytes"],
            "sparse_gzip_bytes": sizes["gzip_bytes"],
            "dense_gzip_bytes": sizes["dense_gzip_bytes"],
            "ratio": sizes["bytes"] / sizes["dense_bytes"],
            "int8_bytes": int8["bytes"],
            "int8_gzip_bytes": int8["gzip_bytes"],
            "int8_dense_bytes": int8["dense_bytes"],
            "int8_stored_dense": len(int8["int8_stored_dense"]),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(RESULTS, "export_size.json"), "w") as f:
        json.dump({"backend": keras.backend.backend(), "model": "resnet50_cifar", "rows": rows}, f, indent=1)
    print("| sparsity (ERK) | sparse .tflite | dense .tflite | sparse / dense | gzip sparse | gzip dense "
          "| full int8 sparse (% of dense float32) | gzip | full int8 dense |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mb = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731
        print(f"| {r['sparsity']} | {mb(r['sparse_bytes'])} | {mb(r['dense_bytes'])} | {100 * r['ratio']:.1f}% "
              f"| {mb(r['sparse_gzip_bytes'])} | {mb(r['dense_gzip_bytes'])} "
              f"| {mb(r['int8_bytes'])} ({100 * r['int8_bytes'] / r['dense_bytes']:.1f}%) "
              f"| {mb(r['int8_gzip_bytes'])} ({100 * r['int8_gzip_bytes'] / r['dense_bytes']:.1f}%) "
              f"| {mb(r['int8_dense_bytes'])} |")


if __name__ == "__main__":
    main()
