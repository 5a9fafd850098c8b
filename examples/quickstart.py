"""Quickstart: train a small CNN dense and 90% sparse with DST-EE, offline.

    python examples/quickstart.py            # any KERAS_BACKEND

Data: scikit-learn's handwritten digits (1,797 real 8x8 scans from the UCI
optical-digits set), which ship inside the scikit-learn package, so nothing is
downloaded. Prints both test accuracies, the per-layer density table and the
final coverage (fraction of weight positions DST-EE has ever activated).
"""

import argparse
import time

import keras

try:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
except ImportError:
    raise SystemExit(
        'The quickstart reads scikit-learn\'s bundled digits: pip install "keras-dstee[examples]"'
    ) from None

from runtime import torch_threads_for_free_cores

import keras_dstee


def load_data(seed):
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)


def make_model():
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="digits_cnn",
    )


def train(x_train, y_train, x_test, y_test, epochs, seed, callbacks=()):
    keras.utils.set_random_seed(seed)
    model = make_model()
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=2, callbacks=list(callbacks))
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return model, accuracy


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--sparsity", type=float, default=0.9, help="DST-EE's global sparsity")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of each model")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, weights and masks")
    args = parser.parse_args()

    start = time.time()
    torch_threads_for_free_cores()  # on a busy machine, torch's threads wait on each other
    x_train, x_test, y_train, y_test = load_data(args.seed)
    print(f"Backend: {keras.backend.backend()}; digits: {len(x_train)} train, {len(x_test)} test")

    print("\n== Dense ==")
    _, dense_accuracy = train(x_train, y_train, x_test, y_test, args.epochs, args.seed)

    print(f"\n== DST-EE, sparsity {args.sparsity} ==")
    callback = keras_dstee.DSTEE(sparsity=args.sparsity, update_freq=50, seed=args.seed)
    model, sparse_accuracy = train(x_train, y_train, x_test, y_test, args.epochs, args.seed, [callback])

    print()
    report = keras_dstee.summary(model)
    stats = callback.optimizer.sparsity_stats()
    print(f"\nDense test accuracy:          {dense_accuracy:.4f}")
    print(f"DST-EE test accuracy:         {sparse_accuracy:.4f}")
    print(f"Sparsity (masks):             {report['total']['sparsity']:.4f}")
    print(f"Final coverage:               {stats['coverage']:.4f}")
    print(f"Wall time:                    {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
