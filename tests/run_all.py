"""Runs the test suite once per Keras backend: tensorflow, jax, torch.

    python tests/run_all.py [pytest arguments]

Keras fixes its backend at import, so each backend gets its own pytest
process; every test id names its backend (`test_x[jax]`). Exits non-zero if
any backend fails.
"""

import os
import re
import subprocess
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def main(args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed = []
    for backend in BACKENDS:
        print(f"\n===== KERAS_BACKEND={backend} =====", flush=True)
        env = dict(os.environ, KERAS_BACKEND=backend)
        process = subprocess.Popen(
            # The slowest tests, so a CI log shows where the time goes.
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=25", *args],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        last = ""
        for line in process.stdout:
            print(line, end="", flush=True)
            if line.strip():
                last = line
        if process.wait() != 0:
            failed.append(backend)
        for count, word in re.findall(r"(\d+) (passed|failed|skipped|error)", last):
            totals[word] += int(count)
    summary = ", ".join(f"{totals[k]} {k}" for k in ("passed", "failed", "skipped"))
    print(f"\nbackends: {', '.join(BACKENDS)}; failing: {', '.join(failed) or 'none'}")
    print(f"all backends: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
