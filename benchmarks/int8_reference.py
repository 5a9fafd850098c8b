"""Is an int8 file's accuracy loss TFLite's or ours? A trained CIFAR model's
test accuracy in Keras, through TFLite's converter alone, and through
`keras_dstee.export_tflite` with TFLite's activation ranges and its own.

    KERAS_BACKEND=tensorflow python benchmarks/int8_reference.py --model runs/r50f98c/model.keras

Full-integer int8 (and, with `--dynamic-range`, dynamic-range int8) is
converted twice from the same model: by a plain `tf.lite.TFLiteConverter`
(dense storage, none of keras-dstee's rewrites) and by `export_tflite`
(sparse storage, the rewrites); both calibrated on the same first 300
training images, standardised as the CIFAR examples do. Equal accuracy
means the loss is the quantization itself, not the sparse export. Full int8
is then exported with `activation_ranges="auto"` (the default): the ranges
it chose, each candidate's agreement with the model on the calibration
images, and the file's test accuracy.
"""

import argparse
import os
import tempfile

import keras
import numpy as np
from common import CIFAR10
from common import load_cifar10

import keras_dstee
from keras_dstee.deploy import export


def plain_tflite(model, folder, calibration):
    """TFLite's converter on the model's SavedModel, set up as
    `export_tflite` sets it up, without the sparse format or any rewrite."""
    saved = os.path.join(folder, "saved_model")
    model.export(saved, format="tf_saved_model", verbose=False)
    samples = None if calibration is None else [calibration]
    path = os.path.join(folder, "plain.tflite")
    with open(path, "wb") as f:
        f.write(export._convert(saved, sparse=False, quantize="int8", samples=samples))
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a .keras file written by a CIFAR example")
    p.add_argument("--data", default=CIFAR10, help="its .npz")
    p.add_argument("--test-images", type=int, default=1000, help="test images to measure accuracy on")
    p.add_argument("--dynamic-range", action="store_true", help="also compare dynamic-range int8")
    args = p.parse_args()
    (x_train, _), (x_test, y_test) = load_cifar10(args.data)
    calibration, x, y = x_train[:300], x_test[: args.test_images], y_test[: args.test_images].reshape(-1)
    model = keras.models.load_model(args.model)
    keras_accuracy = float(np.mean(keras.ops.convert_to_numpy(model.predict(x, verbose=0)).argmax(-1) == y))
    print(f"Keras: {keras_accuracy:.4f} on {len(y)} test images")
    for name, samples in [("full int8", calibration)] + ([("dynamic-range int8", None)] if args.dynamic_range else []):
        settings = {"activation_ranges": "minmax"} if samples is not None else {}
        with tempfile.TemporaryDirectory() as folder:
            plain = keras_dstee.evaluate_tflite(plain_tflite(model, folder, samples), x, y)
            ours = os.path.join(folder, "ours.tflite")
            report = keras_dstee.export_tflite(model, ours, quantize="int8", representative_data=samples, **settings)
            print(f"{name}: TFLite's converter alone {plain:.4f}, export_tflite {keras_dstee.evaluate_tflite(ours, x, y):.4f}"
                  + (f" (TFLite's activation ranges; calibration_agreement {report['calibration_agreement']:.2f})" if samples is not None else ""))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "auto.tflite")
        report = keras_dstee.export_tflite(model, path, quantize="int8", representative_data=calibration)
        scores = ", ".join(f"{label} {score:.3f}" for label, score in report["activation_range_scores"].items())
        print(f"full int8, activation_ranges='auto': {keras_dstee.evaluate_tflite(path, x, y):.4f} "
              f"(chose {report['activation_ranges']}; agreement on the calibration images: {scores})")


if __name__ == "__main__":
    main()
