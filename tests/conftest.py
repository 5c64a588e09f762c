import os

# Triton kernels must run on the interpreter (no GPU here), and the flag is read when they are imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402  (after the interpreter flag on purpose)

import pytest  # noqa: E402

COMMITTED_DATASET = Path(__file__).parent / "data" / "synth-irt4"


@pytest.fixture(scope="session")
def committed_dataset() -> Path:
    """The small ray-traced RadioMapSeer-layout data set committed under tests/data (its README)."""
    assert (COMMITTED_DATASET / "png" / "buildings_complete").is_dir(), f"{COMMITTED_DATASET} is missing"
    return COMMITTED_DATASET


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of small training runs: two threads only contend on a shared
    2-core machine. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_sim_script(script: str, timeout: int) -> dict:
    """Run a sim test file as a script in its own process (Dr.Jit's state is global and a bad libLLVM
    aborts the process it runs in) and return the JSON it prints last; skip where Sionna cannot run."""
    import json
    import subprocess
    import sys

    from irt4.data.raytrace import missing_backend_reason

    reason = missing_backend_reason()
    if reason:
        pytest.skip(reason)
    run = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
