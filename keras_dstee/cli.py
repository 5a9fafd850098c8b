"""`keras-dstee`: summarise or export a saved `.keras` model.

    keras-dstee summary m.keras
    keras-dstee export m.keras --tflite out.tflite [--int8 [--representative-data x.npy [--per-tensor] [--activation-ranges minmax]]] [--dense] [--optimize-for latency] [--slim]
    keras-dstee export m.keras --saved-model out_dir
    keras-dstee export m.keras --onnx out.onnx
    keras-dstee --version

The command line calls the library; nothing in the library imports it.
Keras (and with it TensorFlow) is imported only once a command needs it, so
`--help`, `--version` and argument errors answer at once: the
`keras-dstee` script starts here through `keras_dstee_cli`, without the
package's `__init__`.
"""

import argparse
import json
import os
import sys
import zipfile


def _version():
    namespace = {}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "version.py")) as f:
        exec(f.read(), namespace)
    return namespace["__version__"]


def _load(parser, path, compile):
    if not os.path.isfile(path):
        parser.error(f"no such file: {path}")
    if not zipfile.is_zipfile(path):
        parser.error(f"not a Keras model file (.keras): {path}")
    import keras

    import keras_dstee  # noqa: F401  (registers SparseOptimizer for loading)

    try:
        return keras.saving.load_model(path, compile=compile)
    except Exception as error:  # noqa: BLE001  (any failure means: not loadable)
        parser.error(f"could not load {path} as a Keras model: {error}")


def _check_folder(parser, path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"the output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        parser.error(f"the output folder is not writable: {folder}")


def _samples(path):
    """A list of input arrays (the form `export_tflite` takes for several
    inputs), or one array, or None."""
    if not path:
        return None
    from keras_dstee import calibration

    samples = calibration.load_samples(path)
    return samples[0] if len(samples) == 1 else samples


def _parser():
    parser = argparse.ArgumentParser(prog="keras-dstee", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="per-kernel density, nonzeros and FLOPs")
    summary.add_argument("model", help="a .keras file")
    summary.add_argument("--input-shape", help="one example's shape, e.g. 32,32,3 (subclassed models)")
    export = commands.add_parser(
        "export", help="export to TFLite, a SavedModel and/or ONNX",
        description="Export a .keras model to TFLite (--tflite), a SavedModel (--saved-model) and/or ONNX (--onnx).",
    )
    export.add_argument("model", help="a .keras file")
    export.add_argument("--tflite", help="the .tflite file to write")
    export.add_argument(
        "--int8", action="store_true",
        help="int8: dynamic range (int8 weights), or full integer with --representative-data",
    )
    export.add_argument(
        "--representative-data",
        help="input samples to calibrate full-integer int8 on: a .npy, or a .npz with one array per input",
    )
    export.add_argument(
        "--io-dtype", choices=("float32", "int8"), default="float32",
        help="the full-integer file's input and output type",
    )
    export.add_argument(
        "--per-tensor", action="store_true",
        help="full-integer int8: one scale per weight tensor instead of one per output channel (smaller file)",
    )
    export.add_argument(
        "--activation-ranges", choices=("auto", "minmax"), default="auto",
        help="full-integer int8: TFLite's activation ranges (minmax), or the candidate that agrees best with the model",
    )
    export.add_argument("--dense", action="store_true", help="do not use the sparse tensor format")
    export.add_argument(
        "--optimize-for", choices=("size", "latency"), default="size",
        help="latency: also report which layers run on a sparse kernel",
    )
    export.add_argument("--saved-model", help="the SavedModel folder to write")
    export.add_argument("--onnx", help="the ONNX file to write")
    export.add_argument("--opset", type=int, help="the ONNX opset (default: the exporter's)")
    export.add_argument(
        "--slim", action="store_true", help="export without the channels that change no output (smaller, faster)"
    )
    export.add_argument("--json", action="store_true", help="print the report as one JSON line")
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "export":
        _check_export_flags(parser, args)
    try:
        return _run(parser, args)
    except (ValueError, RuntimeError, OSError) as error:
        # What went wrong, on one line, as for a bad flag: no traceback.
        parser.error(str(error).strip().splitlines()[0])


def _run(parser, args):
    if args.command == "summary":
        import keras_dstee

        # Compiled, a model still training sparse shows its masks' budgets.
        model = _load(parser, args.model, compile=True)
        shape = tuple(int(d) for d in args.input_shape.split(",")) if args.input_shape else None
        keras_dstee.summary(model, input_shape=shape)
        return 0
    return _export(parser, args)


def _check_export_flags(parser, args):
    """Every flag combination checked before Keras is imported."""
    if not (args.tflite or args.saved_model or args.onnx):
        parser.error("give --tflite FILE, --saved-model DIR and/or --onnx FILE")
    if args.representative_data and not args.int8:
        parser.error("--representative-data calibrates full-integer int8: add --int8")
    if args.per_tensor and not args.representative_data:
        parser.error("--per-tensor applies to full-integer int8: add --int8 --representative-data x.npy")
    if args.activation_ranges != "auto" and not args.representative_data:
        parser.error("--activation-ranges applies to full-integer int8: add --int8 --representative-data x.npy")
    if args.io_dtype != "float32" and not args.representative_data:
        parser.error("--io-dtype int8 needs full-integer int8: add --int8 --representative-data x.npy")
    if args.representative_data and not os.path.isfile(args.representative_data):
        parser.error(f"no such file: {args.representative_data}")
    for path in (args.tflite, args.saved_model, args.onnx):
        if path:
            _check_folder(parser, path)


def _export(parser, args):
    # The optimizer plays no part in an export (and may be a custom class).
    model = _load(parser, args.model, compile=False)
    from keras_dstee.deploy import export as export_lib

    report = {}
    if args.saved_model:
        report["saved_model"] = export_lib.export_saved_model(model, args.saved_model, slim=args.slim)
    if args.onnx:
        from keras_dstee.deploy import onnx_export

        report["onnx"] = onnx_export.export_onnx(model, args.onnx, slim=args.slim, opset_version=args.opset)
    if args.tflite:
        report.update(
            export_lib.export_tflite(
                model,
                args.tflite,
                sparse=not args.dense,
                quantize="int8" if args.int8 else None,
                optimize_for=args.optimize_for,
                representative_data=_samples(args.representative_data),
                io_dtype=args.io_dtype,
                per_channel=not args.per_tensor,
                activation_ranges=args.activation_ranges,
                slim=args.slim,
            )
        )
    if args.json:
        print(json.dumps(report))
    elif args.tflite:
        kb = lambda n: f"{n / 1024:,.1f} KB"  # noqa: E731
        print(f"wrote {report['path']}: {kb(report['bytes'])} ({kb(report['gzip_bytes'])} gzipped)")
        print(f"dense export:  {kb(report['dense_bytes'])} ({kb(report['dense_gzip_bytes'])} gzipped)")
        scales = {True: ", a scale per output channel", False: ", one scale per weight tensor"}.get(report.get("per_channel"), "")
        ranges = f", activation ranges {report['activation_ranges']}" if "activation_ranges" in report else ""
        print(f"quantization: {report['quantization']}{scales}{ranges}")
        for row in report.get("layers", []):
            print(f"{row['path']}: {row['op']}, {row['storage']} ({row['reason']})")
    if "saved_model" in report and not args.json:
        print(f"wrote {report['saved_model']}")
    if "onnx" in report and not args.json:
        print(f"wrote {report['onnx']['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
