"""Keeps the converters' own output out of the user's log.

TensorFlow's and TFLite's C++ code writes to the process's file descriptors
(`fully_quantize: 0, inference_type: 6 ...` once per conversion, SavedModel
loader lines, the XNNPack banner), which Python's `sys.stdout` redirection
does not reach. An export runs its conversions inside `quiet()`: that output
goes to a temporary file and is shown only if the block fails; Python
warnings raised inside are re-issued after it, so none of the library's own
is lost.
"""

import contextlib
import os
import sys
import tempfile
import warnings


@contextlib.contextmanager
def quiet():
    """Silences file descriptors 1 and 2 for the block (shown on failure)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # a process without them (closed stdio): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as log, warnings.catch_warnings(record=True) as caught:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace")[-5000:])
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
