"""The `keras-dstee` command's entry point.

It runs `keras_dstee/cli.py` without importing the `keras_dstee` package
first: the package's `__init__` imports Keras, and with it a backend (2-5 s),
so `--help`, `--version` and a wrong flag would wait for it. The command
imports the library itself once a command needs it.
"""

import importlib.util
import os
import sys


def main(argv=None):
    package = importlib.util.find_spec("keras_dstee")  # finds it without running __init__
    path = os.path.join(os.path.dirname(package.origin), "cli.py")
    spec = importlib.util.spec_from_file_location("_keras_dstee_cli", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
