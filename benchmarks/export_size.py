"""TFLite file sizes of ResNet-50-CIFAR at 90% and 98% sparsity (ERK).

    python benchmarks/export_size.py

Masks the kernels exactly as sparse training starts (`SparseOptimizer`,
ERK densities), exports with `keras_dstee.export_tflite` and prints the
sparse and dense `.tflite` sizes (raw and gzipped), float32 and full-integer
int8 (calibrated on 100 random inputs: the size does not depend on them),
also with one scale per weight tensor (`per_channel=False`), and where the
full-int8 file's bytes go. A third row is the slimmed model at 98 % with
half the channels removed in every layer (`channel_sparsity=0.5,
min_channels=1`), its structure made by a short run of the real schedule to
its end on random inputs (16 steps of batch 32, masks and channels updated
every 2 steps), the kernels then set to their initial values inside the
final masks as in the other rows, exported with `slim=True`; its ratios are
to its unslimmed model's dense float32 file. Writes
`benchmarks/results/export_size.json`.
"""

import json
import os
import tempfile

import keras
import numpy as np
from common import RESULTS

import keras_dstee


def bytes_by_part(path):
    """Where a `.tflite` file's bytes go: sparse weight values, their index
    arrays, other constants (biases), quantization parameters (float32
    scales, int64 zero points; each distinct one once), the rest (graph, names, shapes)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(path)
    parts = dict.fromkeys(["sparse values", "sparse indices", "sparse segments", "other constants", "quantization"], 0)
    counted = set()  # tensors may share a buffer
    vectors = set()
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        stored = 0 if data is None or tensor.buffer in counted else len(data)
        counted.add(tensor.buffer)
        if tensor.sparsity is not None:
            parts["sparse values"] += stored
            for level in tensor.sparsity.dimMetadata:
                if level.arrayIndices is not None:
                    parts["sparse indices"] += level.arrayIndices.values.nbytes
                    parts["sparse segments"] += level.arraySegments.values.nbytes
        else:
            parts["other constants"] += stored
        q = tensor.quantization
        if q is not None and q.scale is not None:
            vectors |= {("scale", q.scale.tobytes()), ("zero point", q.zeroPoint.tobytes())}
    # `export_tflite` stores each distinct quantization vector once.
    parts["quantization"] = sum(len(stored) for _, stored in vectors)
    parts["graph and names"] = os.path.getsize(path) - sum(parts.values())
    return parts


def masked_at_start(sparsity):
    """ResNet-50-CIFAR with its kernels masked to ERK as training starts."""
    keras.utils.set_random_seed(0)
    model = keras_dstee.models.resnet50_cifar(10)
    optimizer = keras_dstee.SparseOptimizer(
        keras.optimizers.SGD(), keras_dstee.layer_densities(model, sparsity), method="static", seed=0
    )
    optimizer.build(model.trainable_variables)
    optimizer.install()
    return model


def with_half_the_channels(sparsity):
    """ResNet-50-CIFAR with half the channels of every layer removed by a
    short run of DST-EE on random inputs, its kernels then set back to their
    initial values inside the final masks (as the rows without channels: a
    short run leaves late-grown weights near 0, which int8 rounds away)."""
    from keras_dstee.training.optimizer import find_sparse_optimizer

    keras.utils.set_random_seed(0)
    model = keras_dstee.models.resnet50_cifar(10)
    initial = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=512)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    callback = keras_dstee.DSTEE(
        sparsity=sparsity, channel_sparsity=0.5, min_channels=1.0, update_freq=2, end=1.0, seed=0
    )
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    for kernel in find_sparse_optimizer(model.optimizer).kernels:
        # `where`, not a product: a product leaves -0.0 where a negative
        # weight is masked, which gzip sees as data.
        mask = keras.ops.convert_to_numpy(kernel.mask)
        kernel.variable.assign(np.where(mask > 0, initial[kernel.variable.path], 0.0))
    keras_dstee.strip(model)
    return model


def measure(model, sparsity, variant, slim):
    report = keras_dstee.summary(model, print_fn=lambda line: None)
    calibration = np.random.default_rng(0).normal(size=(100, 32, 32, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as folder:
        sizes = keras_dstee.export_tflite(model, os.path.join(folder, "m.tflite"), slim=slim)
        # The reference is the unslimmed dense model's file in every row.
        dense = keras_dstee.export_tflite(model, os.path.join(folder, "d.tflite"), sparse=False)
        dense_int8 = keras_dstee.export_tflite(
            model, os.path.join(folder, "d8.tflite"), sparse=False, quantize="int8", representative_data=calibration
        )
        int8 = keras_dstee.export_tflite(
            model, os.path.join(folder, "m8.tflite"), quantize="int8", representative_data=calibration, slim=slim
        )
        int8_parts = bytes_by_part(os.path.join(folder, "m8.tflite"))
        per_tensor = keras_dstee.export_tflite(
            model, os.path.join(folder, "m8t.tflite"), quantize="int8", representative_data=calibration,
            per_channel=False, slim=slim,
        )
    return {
        "sparsity": sparsity,
        "variant": variant,
        "kernel_sparsity": report["total"]["sparsity"],
        "kernel_nonzeros": report["total"]["nonzeros"],
        "sparse_bytes": sizes["bytes"],
        "dense_bytes": dense["bytes"],
        "sparse_gzip_bytes": sizes["gzip_bytes"],
        "dense_gzip_bytes": dense["gzip_bytes"],
        "ratio": sizes["bytes"] / dense["bytes"],
        "int8_bytes": int8["bytes"],
        "int8_gzip_bytes": int8["gzip_bytes"],
        "int8_dense_bytes": dense_int8["bytes"],
        "int8_stored_dense": len(int8["int8_stored_dense"]),
        "int8_bytes_by_part": int8_parts,
        "int8_per_tensor_bytes": per_tensor["bytes"],
    }


def main():
    rows = []
    for sparsity, variant, make, slim in [
        (0.9, "ERK", masked_at_start, False),
        (0.98, "ERK", masked_at_start, False),
        (0.98, "half the channels, slimmed", with_half_the_channels, True),
    ]:
        rows.append(measure(make(sparsity), sparsity, variant, slim))
        print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(RESULTS, "export_size.json"), "w") as f:
        json.dump({"backend": keras.backend.backend(), "model": "resnet50_cifar", "rows": rows}, f, indent=1)
    print("| sparsity | sparse .tflite | dense .tflite | sparse / dense | gzip sparse | gzip dense "
          "| full int8 sparse (% of dense float32) | gzip | full int8 dense | full int8 sparse, one scale per weight tensor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mb = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731
        print(f"| {r['sparsity']}, {r['variant']} | {mb(r['sparse_bytes'])} | {mb(r['dense_bytes'])} | {100 * r['ratio']:.1f}% "
              f"| {mb(r['sparse_gzip_bytes'])} | {mb(r['dense_gzip_bytes'])} "
              f"| {mb(r['int8_bytes'])} ({100 * r['int8_bytes'] / r['dense_bytes']:.1f}%) "
              f"| {mb(r['int8_gzip_bytes'])} ({100 * r['int8_gzip_bytes'] / r['dense_bytes']:.1f}%) "
              f"| {mb(r['int8_dense_bytes'])} "
              f"| {mb(r['int8_per_tensor_bytes'])} ({100 * r['int8_per_tensor_bytes'] / r['dense_bytes']:.1f}%) |")
    print("\nWhere the full-int8 sparse file's bytes go:\n")
    print("| sparsity | " + " | ".join(rows[0]["int8_bytes_by_part"]) + " |")
    print("|---" * (len(rows[0]["int8_bytes_by_part"]) + 1) + "|")
    for r in rows:
        print(f"| {r['sparsity']}, {r['variant']} | " + " | ".join(f"{n / 1e6:.2f} MB" for n in r["int8_bytes_by_part"].values()) + " |")


if __name__ == "__main__":
    main()
