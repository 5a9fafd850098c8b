"""Full-int8 activation ranges: TFLite's extremes, or the narrower candidate
on which the file agrees best with the model (`activation_ranges="auto"`)."""

import warnings

import keras
import numpy as np
import pytest
from helpers import only_on
from helpers import to_numpy

import keras_dstee
from keras_dstee.deploy import activation_ranges
from keras_dstee.deploy import tflite_runner

pytest.importorskip("ai_edge_litert.interpreter")


def _mlp_and_a_rare_sample():
    """An MLP and 300 calibration inputs, one of them 1000x the others: its
    extremes stretch every range TFLite's calibrator records."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.set_weights([
        rng.normal(size=(16, 32)).astype("float32"),
        np.zeros(32, "float32"),
        rng.normal(size=(32, 10)).astype("float32"),
        np.zeros(10, "float32"),
    ])
    x = rng.normal(size=(300, 16)).astype("float32")
    x[7] *= 1000.0
    return model, x, rng.normal(size=(500, 16)).astype("float32")


def _agreement(path, model, x):
    return float(np.mean(tflite_runner.predict_tflite(path, x).argmax(-1) == to_numpy(model(x)).argmax(-1)))


def test_auto_ranges_recover_what_a_rare_sample_costs(tmp_path):
    model, x, unseen = _mlp_and_a_rare_sample()
    with pytest.warns(UserWarning, match="tries narrower ranges"):
        tflite = keras_dstee.export_tflite(
            model, str(tmp_path / "minmax.tflite"), quantize="int8", representative_data=x, activation_ranges="minmax"
        )
    assert tflite["activation_ranges"] == "minmax" and "activation_range_scores" not in tflite
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = keras_dstee.export_tflite(model, str(tmp_path / "auto.tflite"), quantize="int8", representative_data=x)
    assert not [w for w in caught if "calibration samples" in str(w.message)]
    scores = auto["activation_range_scores"]
    assert list(scores) == ["minmax"] + [f"mean over groups of {g}" for g in activation_ranges.GROUPS]
    # TFLite's own candidate is the file `activation_ranges="minmax"` writes.
    assert scores["minmax"] == pytest.approx(tflite["calibration_agreement"])
    assert auto["activation_ranges"] == max(scores, key=scores.get) != "minmax"
    assert auto["calibration_agreement"] == pytest.approx(scores[auto["activation_ranges"]])
    # Narrower ranges hold on samples the calibration never saw.
    assert _agreement(tflite["path"], model, unseen) < 0.5
    assert _agreement(auto["path"], model, unseen) >= 0.9
    assert auto["op_resolver"] == "default" and auto["quantization"] == "full_int8"


# The choice is made in the TensorFlow process that converts, the same way
# from every backend.
@only_on("tensorflow", "the candidates are scored where TFLite converts")
def test_a_tie_keeps_tflite_ranges_and_groups_need_enough_samples(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
    x = np.random.default_rng(1).normal(size=(10, 8)).astype("float32")
    monkeypatch.setattr(activation_ranges, "_agreement", lambda *args: 1.0)
    report = keras_dstee.export_tflite(model, str(tmp_path / "m.tflite"), quantize="int8", representative_data=x)
    # Groups of 64 and 16 would hold all 10 samples: TFLite's extremes again.
    assert list(report["activation_range_scores"]) == ["minmax", "mean over groups of 4", "mean over groups of 1"]
    assert report["activation_ranges"] == "minmax"


def test_several_outputs_get_tflite_ranges(tmp_path):
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(4)(hidden), keras.layers.Dense(2)(hidden)])
    x = np.random.default_rng(2).normal(size=(64, 8)).astype("float32")
    report = keras_dstee.export_tflite(model, str(tmp_path / "m.tflite"), quantize="int8", representative_data=x)
    assert report["activation_ranges"] == "minmax" and "activation_range_scores" not in report


@pytest.mark.parametrize("ranges", ["auto", "minmax"])
def test_a_layer_that_never_fires_on_the_calibration_samples_exports(tmp_path, ranges):
    # Its ReLUs are 0 on every sample: TFLite records the range 0 to 1e-38,
    # the Dense layer computing it needs a requantization scale XNNPACK
    # refuses, and the file could not run (a shrunk net on JAX met it).
    rng = np.random.default_rng(3)
    model = keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3),
    ])
    model.set_weights([
        rng.normal(size=(8, 16)).astype("float32"), np.zeros(16, "float32"),
        rng.normal(size=(16, 4)).astype("float32"), np.full(4, -1000.0, "float32"),
        rng.normal(size=(4, 3)).astype("float32"), np.array([0.3, -0.2, 0.1], "float32"),
    ])
    x = rng.normal(size=(64, 8)).astype("float32")
    report = keras_dstee.export_tflite(
        model, str(tmp_path / "m.tflite"), quantize="int8", representative_data=x, activation_ranges=ranges
    )
    # The output is the last bias, held to int8's precision.
    np.testing.assert_allclose(tflite_runner.predict_tflite(report["path"], x), to_numpy(model(x)), atol=0.01)
