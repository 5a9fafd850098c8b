"""Runs the test suite once per Keras backend: tensorflow, jax, torch.

    python tests/run_all.py [--jobs N] [pytest arguments]

Keras fixes its backend at import, so each backend gets its own pytest
process; every test id names its backend (`test_x[jax]`). Backends run side
by side, `--jobs` at a time (default: one per CPU core, at most three):
most of a test's time is single-threaded (tracing, compiling, subprocesses
starting), so two cores finish two backends in little more than the time
of one. With more than one job, a backend's output is printed whole when it
finishes. Exits non-zero if any backend fails.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

BACKENDS = ("tensorflow", "jax", "torch")
# The longest first, so the others fill the remaining job.
START_ORDER = ("jax", "tensorflow", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(args, basetemp):
    # The slowest tests, so a CI log shows where the time goes; each backend
    # its own temporary folder, so parallel sessions never clean up each other's.
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=25", f"--basetemp={basetemp}", *args]


def _start(backend, args, workdir, stream):
    env = dict(os.environ, KERAS_BACKEND=backend)
    basetemp = os.path.join(workdir, f"pytest-{backend}")
    log = None if stream else open(os.path.join(workdir, f"{backend}.log"), "w+")
    process = subprocess.Popen(
        _command(args, basetemp), cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE if stream else log, stderr=subprocess.STDOUT,
    )
    return process, log


def _print_stream(process):
    """Echoes a running backend's output live; returns its last non-empty line."""
    last = ""
    for line in process.stdout:
        print(line, end="", flush=True)
        if line.strip():
            last = line
    return last


def _print_log(log):
    log.seek(0)
    text = log.read()
    log.close()
    print(text, end="" if text.endswith("\n") else "\n", flush=True)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--jobs", type=int, default=min(len(BACKENDS), os.cpu_count() or 1))
    options, args = parser.parse_known_args(argv)
    if options.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {options.jobs}")
    jobs = min(options.jobs, len(BACKENDS))
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed = []
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="keras-dstee-tests-") as workdir:
        waiting = list(START_ORDER)
        running = {}
        while waiting or running:
            while waiting and len(running) < jobs:
                backend = waiting.pop(0)
                if jobs == 1:
                    print(f"\n===== KERAS_BACKEND={backend} =====", flush=True)
                else:
                    print(f"started KERAS_BACKEND={backend} ({time.time() - start:.0f} s)", flush=True)
                running[backend] = (*_start(backend, args, workdir, stream=jobs == 1), time.time())
            if jobs == 1:
                backend, (process, log, began) = next(iter(running.items()))
                last = _print_stream(process)
            else:
                finished = [b for b, (p, _, _) in running.items() if p.poll() is not None]
                if not finished:
                    time.sleep(1)
                    continue
                backend = finished[0]
                process, log, began = running[backend]
                print(f"\n===== KERAS_BACKEND={backend} ({time.time() - began:.0f} s) =====", flush=True)
                last = _print_log(log)
            del running[backend]
            if process.wait() != 0:
                failed.append(backend)
            for count, word in re.findall(r"(\d+) (passed|failed|skipped|error)", last):
                totals[word] += int(count)
    summary = ", ".join(f"{totals[k]} {k}" for k in ("passed", "failed", "skipped"))
    print(f"\nbackends: {', '.join(BACKENDS)} ({jobs} at a time, {time.time() - start:.0f} s); "
          f"failing: {', '.join(failed) or 'none'}")
    print(f"all backends: {summary}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
