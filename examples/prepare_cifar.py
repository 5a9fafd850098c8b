"""Writes CIFAR-10 or CIFAR-100 as the `.npz` the examples' `--data` reads.

    python examples/prepare_cifar.py cifar100                # -> cifar100.npz
    python examples/prepare_cifar.py cifar10 --out data/cifar10.npz

The arrays are `x_train`, `y_train`, `x_test`, `y_test` (uint8 images of
shape (N, 32, 32, 3), integer labels), the layout of the examples' `--data`.
The data come from tensorflow-datasets when the dataset is prepared in its
local folder (`TFDS_DATA_DIR`, default ~/tensorflow_datasets), else from
`keras.datasets` (this needs the network once; Keras caches the download
in ~/.keras/datasets). On a machine without network, run this where there
is one and copy the file.
"""

import argparse

import numpy as np
from cifar import load_cifar


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=("cifar10", "cifar100"))
    p.add_argument("--out", help="the .npz to write (default: DATASET.npz)")
    args = p.parse_args()
    (x_train, y_train), (x_test, y_test) = load_cifar(args.dataset, None)
    out = args.out or f"{args.dataset}.npz"
    np.savez_compressed(
        out,
        x_train=np.asarray(x_train, "uint8"),
        y_train=np.asarray(y_train).reshape(-1).astype("int64"),
        x_test=np.asarray(x_test, "uint8"),
        y_test=np.asarray(y_test).reshape(-1).astype("int64"),
    )
    print(f"{out}: {len(x_train)} training and {len(x_test)} test images, {int(np.max(y_train)) + 1} classes")


if __name__ == "__main__":
    main()
