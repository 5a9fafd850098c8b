"""Runs the test suite once per Keras backend: tensorflow, jax, torch.

    python tests/run_all.py [--jobs N] [pytest arguments]

Keras fixes its backend at import, so each backend gets its own pytest
processes; every test id names its backend (`test_x[jax]`). Processes run
side by side, `--jobs` at a time (default: one per CPU core): most of a
test's time is single-threaded (tracing, compiling, subprocesses starting),
so two cores finish the suite in little more than half the time. Without
pytest arguments, each backend's suite runs as two processes, the
subprocess-heavy files (examples, several processes, distribution) and the
rest, so the parts pack evenly. With more than one job, a part's output is
printed whole when it finishes. Exits non-zero if any part fails.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

BACKENDS = ("tensorflow", "jax", "torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Files whose tests mostly wait on subprocesses (example scripts, several
# processes, TensorFlow exports); run apart from the rest on each backend.
SUBPROCESS_HEAVY = ["tests/test_examples.py", "tests/test_benchmarks.py", "tests/test_multiprocess.py",
                    "tests/test_distributed.py"]
# (backend, part), longest first (measured on 2 cores), so the short parts
# fill in at the end.
PARTS = [("jax", "rest"), ("tensorflow", "rest"), ("jax", "subprocesses"), ("torch", "rest"),
         ("torch", "subprocesses"), ("tensorflow", "subprocesses")]


def _part_args(part):
    if part == "subprocesses":
        return SUBPROCESS_HEAVY
    return [f"--ignore={path}" for path in SUBPROCESS_HEAVY]


def _command(args, basetemp):
    # The slowest tests, so a CI log shows where the time goes; each backend
    # its own temporary folder, so parallel sessions never clean up each other's.
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--durations=25", f"--basetemp={basetemp}", *args]


def _start(backend, name, args, workdir, stream):
    env = dict(os.environ, KERAS_BACKEND=backend)
    # torch.compile's cache (GBs over a suite) goes with the run, not into /tmp for good.
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(workdir, "torchinductor"))
    basetemp = os.path.join(workdir, f"pytest-{name}")
    log = None if stream else open(os.path.join(workdir, f"{name}.log"), "w+")
    process = subprocess.Popen(
        _command(args, basetemp), cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE if stream else log, stderr=subprocess.STDOUT,
    )
    return process, log


def _print_stream(process):
    """Echoes a running part's output live; returns its last non-empty line."""
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False,
        epilog="Any other argument goes to pytest (e.g. tests/test_saving.py -k resume).",
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="pytest processes side by side (default: one per CPU core)")
    options, args = parser.parse_known_args(argv)
    if options.help:
        parser.print_help()
        return 0
    if options.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {options.jobs}")
    if args:  # the user's selection: one process per backend
        parts = [(backend, None, args) for backend in ("jax", "tensorflow", "torch")]
    else:
        parts = [(backend, part, _part_args(part)) for backend, part in PARTS]
    jobs = min(options.jobs, len(parts))
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    failed = []
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="keras-dstee-tests-") as workdir:
        waiting = list(parts)
        running = {}
        while waiting or running:
            while waiting and len(running) < jobs:
                backend, part, part_args = waiting.pop(0)
                name = f"{backend}-{part}" if part else backend
                title = f"KERAS_BACKEND={backend}" + (f" ({part})" if part else "")
                if jobs == 1:
                    print(f"\n===== {title} =====", flush=True)
                else:
                    print(f"started {title} ({time.time() - start:.0f} s)", flush=True)
                process, log = _start(backend, name, part_args, workdir, stream=jobs == 1)
                running[name] = (process, log, time.time(), title, backend)
            if jobs == 1:
                name, (process, log, began, title, backend) = next(iter(running.items()))
                last = _print_stream(process)
            else:
                finished = [n for n, (p, *_) in running.items() if p.poll() is not None]
                if not finished:
                    time.sleep(1)
                    continue
                name = finished[0]
                process, log, began, title, backend = running[name]
                print(f"\n===== {title}, {time.time() - began:.0f} s =====", flush=True)
                last = _print_log(log)
            del running[name]
            # pytest exits 5 when a part selects no test (e.g. -k matching none there).
            if process.wait() not in (0, 5) and backend not in failed:
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
