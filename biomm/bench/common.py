"""Helpers shared by the benchmarks: peak RSS of a child process, machine facts."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys


def run_child(module: str, *args: str) -> dict:
    """Run `python -m module args` in a child process and return the JSON object on its last stdout line."""
    code = (
        "import json, resource, runpy, sys; sys.argv = sys.argv[1:]; "
        "out = runpy.run_module(sys.argv[0], run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code, module, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (ru_maxrss)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine() -> dict:
    """CPU count, Python version, processor and 1-minute load average."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
