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
    """This process's own peak resident set size in MiB: VmHWM of /proc/self/status on Linux, else ru_maxrss.

    Not ru_maxrss on Linux: across fork + exec it keeps the parent's peak, so a step run in a child of a
    large bench process would report the parent's footprint."""
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine() -> dict:
    """CPU count, Python version, processor and 1-minute load average."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "processor": platform.machine(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
