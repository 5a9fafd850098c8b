"""TFLite file sizes of ResNet-50-CIFAR at 90% and 98% sparsity (ERK).

    python benchmarks/export_size.py

Masks the kernels exactly as sparse training starts (`SparseOptimizer`,
ERK densities), exports with `keras_dstee.export_tflite` and prints the
sparse and dense `.tflite` sizes (raw and gzipped). Writes
`benchmarks/results/export_size.json`.
"""

import json
import os
import tempfile

import keras
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
        with tempfile.TemporaryDirectory() as folder:
            sizes = keras_dstee.export_tflite(model, os.path.join(folder, "m.tflite"))
        row = {
            "sparsity": sparsity,
            "kernel_sparsity": report["total"]["sparsity"],
            "sparse_bytes": sizes["bytes"],
            "dense_bytes": sizes["dense_bytes"],
            "sparse_gzip_bytes": sizes["gzip_bytes"],
            "dense_gzip_bytes": sizes["dense_gzip_bytes"],
            "ratio": sizes["bytes"] / sizes["dense_bytes"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(RESULTS, "export_size.json"), "w") as f:
        json.dump({"backend": keras.backend.backend(), "model": "resnet50_cifar", "rows": rows}, f, indent=1)
    print("| sparsity (ERK) | sparse .tflite | dense .tflite | sparse / dense | gzip sparse | gzip dense |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sparsity']} | {r['sparse_bytes'] / 1e6:.2f} MB | {r['dense_bytes'] / 1e6:.2f} MB "
              f"| {100 * r['ratio']:.1f}% | {r['sparse_gzip_bytes'] / 1e6:.2f} MB | {r['dense_gzip_bytes'] / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
