"""Exports under the TensorFlow backend for a model held by JAX or PyTorch.

TFLite conversion (and SavedModel on PyTorch, ONNX on JAX) needs
TensorFlow's graph, and Keras fixes its backend at import. So the parent
saves the model's backend-neutral `.keras` file and starts this module in a
TensorFlow-backend process (`run`) with one request, a JSON file:

    {"model": "m.keras", "classes": [["my_models", "Sub"], ...],
     "function": "export_tflite", "path": "m.tflite", "options": {...},
     "samples": "samples.npz" or null}

`function` is one of the library's export functions, called with `path` and
`options` as its keyword arguments; `classes` are the user's classes the
file names (imported from their modules, so Keras can rebuild them). The
worker prints one JSON line: `{"report": ...}` or `{"error": "..."}`.
"""

import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

# The packages whose classes Keras rebuilds by itself.
_KNOWN_PACKAGES = {"keras", "keras_dstee", "keras_hub", "keras_cv", "keras_nlp"}


def user_classes(model):
    """`[module, class name]` of each class in `model` the worker must import
    to rebuild it; refuses a class defined in the running script, which
    another process cannot import."""
    found = {}
    for obj in [model, *model._flatten_layers(include_self=False, recursive=True)]:
        cls = type(obj)
        if cls.__module__.split(".")[0] in _KNOWN_PACKAGES:
            continue
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            where = "in the script you ran (`__main__`)" if cls.__module__ == "__main__" else "inside a function"
            raise ValueError(
                f"Cannot export on {_backend()}: class {cls.__name__!r} is defined {where}, and the export "
                "rebuilds the model in a TensorFlow-backend process that cannot import it. Move the class "
                "into a module (a .py file your script imports), or export with KERAS_BACKEND=tensorflow."
            )
        found[(cls.__module__, cls.__qualname__)] = None
    return [list(key) for key in found]


def _backend():
    import keras

    return f"the {keras.backend.backend()} backend"


_ENTRY = "import sys; from keras_dstee.deploy import tensorflow_worker as w; sys.exit(w.main(sys.argv[1:]))"


def run(model, function, path, options, samples=None):
    """Calls `keras_dstee.<function>(model, path, **options)` in a
    TensorFlow-backend process; returns its report. `samples`, calibration
    arrays, travel as an `.npz`."""
    classes = user_classes(model)
    with tempfile.TemporaryDirectory() as folder:
        request = {
            "model": os.path.join(folder, "model.keras"),
            "classes": classes,
            "function": function,
            "path": os.path.abspath(path),
            "options": options,
            "samples": None,
        }
        model.save(request["model"])
        if samples is not None:
            request["samples"] = os.path.join(folder, "samples.npz")
            np.savez(request["samples"], *samples)
        request_path = os.path.join(folder, "request.json")
        with open(request_path, "w") as f:
            json.dump(request, f)
        # The parent's import path, so the worker finds the user's modules.
        env = dict(os.environ, KERAS_BACKEND="tensorflow", PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        # `-c`, not `-m`: the package imports this module before runpy would.
        command = [sys.executable, "-c", _ENTRY, request_path]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    answer = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if "report" in answer and result.returncode == 0:
        return answer["report"]
    cause = answer.get("error") or (result.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise RuntimeError(
        f"{function} under the TensorFlow backend failed: {cause}\n\nThe TensorFlow process's log ended with:\n"
        + result.stderr[-2000:]
    )


def _functions():
    """The export functions a request may name."""
    from keras_dstee.deploy import export
    from keras_dstee.deploy import onnx_export

    return {
        "export_tflite": export.export_tflite,
        "export_saved_model": export.export_saved_model,
        "export_onnx": onnx_export.export_onnx,
    }


def _load(request):
    import keras

    from keras_dstee import calibration
    from keras_dstee.deploy.export import mark_called

    custom_objects = {}
    for module, qualname in request["classes"]:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        custom_objects[keras.saving.get_registered_name(cls)] = cls
    # The optimizer plays no part in an export (and may be a custom class).
    model = keras.saving.load_model(request["model"], custom_objects=custom_objects, compile=False)
    mark_called(model)
    options = dict(request["options"])
    if request["samples"]:
        samples = calibration.load_samples(request["samples"])
        options["representative_data"] = samples[0] if len(samples) == 1 else samples
    return model, options


def main(argv):
    with open(argv[0]) as f:
        request = json.load(f)
    try:
        model, options = _load(request)
        # The export's own prints would mix with the answer on stdout.
        with contextlib.redirect_stdout(sys.stderr):
            report = _functions()[request["function"]](model, request["path"], **options)
    except Exception as error:  # noqa: BLE001  (every failure goes back to the parent)
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 1
    print(json.dumps({"report": report}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
