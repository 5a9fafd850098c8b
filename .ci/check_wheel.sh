#!/usr/bin/env bash
# The package as users get it: build the sdist and the wheel, check what the
# wheel holds, install it in a fresh virtual environment (with JAX as the
# backend) and run the quickstart's library calls from outside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m build --sdist --wheel --outdir "$work/dist" . > "$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/*.whl)
version=$(python -c "import runpy; print(runpy.run_path('keras_dstee/version.py')['__version__'])")
ls "$work"/dist/keras_dstee-"$version".tar.gz > /dev/null
python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
stray = [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "examples", ".ci")]
assert not stray, f"the wheel holds files that are not the library: {stray[:5]}"
assert "keras_dstee/training/optimizer.py" in names and any(n.endswith("licenses/LICENSE") for n in names), names
print(f"wheel: {sys.argv[1].rsplit('/', 1)[-1]}, {len(names)} files, library and LICENSE only")
PY
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel" jax > "$work/install.log" 2>&1 || { tail -30 "$work/install.log"; exit 1; }
cd "$work"
KERAS_BACKEND=jax "$work/venv/bin/keras-dstee" --version 2>/dev/null | grep -qx "keras-dstee $version"
KERAS_BACKEND=jax "$work/venv/bin/python" - "$version" <<'PY'
import sys
import keras, numpy as np
import keras_dstee

assert keras_dstee.__version__ == sys.argv[1] and "site-packages" in keras_dstee.__file__, keras_dstee.__file__
rng = np.random.default_rng(0)
x = rng.random((256, 8, 8, 1), dtype="float32")
y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("int32")
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(2)])
model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
callback = keras_dstee.DSTEE(sparsity=0.9, update_freq=2, seed=0)
model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[callback])
report = keras_dstee.summary(model, print_fn=lambda line: None)
assert abs(report["total"]["sparsity"] - 0.9) < 0.01, report["total"]
assert 0 < callback.optimizer.sparsity_stats()["coverage"] <= 1
keras_dstee.strip(model)
print(f"installed wheel {sys.argv[1]}: trained at sparsity {report['total']['sparsity']:.4f} from {keras_dstee.__file__}")
PY
