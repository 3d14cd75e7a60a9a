"""Start Python worker processes on 127.0.0.1 for the multi-process tests, wait for them
within a deadline, and always clean them up."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from narset_jax.distributed import env_for_host_devices

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(argvs, deadline_s: float) -> list[tuple[int, str, str]]:
    """Run ``python -c <argv...>`` for each argv (one host CPU device each, CPU only,
    the repository on the path), all at once; ``(returncode, stdout, stderr)`` each.
    Fails the test if they are not all done within ``deadline_s``; kills leftovers."""
    env = env_for_host_devices(1)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        for argv in argvs
    ]
    results = []
    try:
        end = time.monotonic() + deadline_s
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, end - time.monotonic()))
            results.append((p.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"multi-process run did not finish within {deadline_s} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=30)
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
    return results
