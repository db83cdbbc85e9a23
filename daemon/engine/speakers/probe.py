"""Does speaker labelling run on this machine? Asked of a child process, once per worker.

A native library built for instructions this CPU lacks dies with SIGILL, which no `except` can
catch: the child takes the blow, and the worker transcribes without speakers and says why. A yes
is remembered (engine/remembered.py: keyed by the CPU, torch and this package's code and weights),
so later starts skip the child's ~3 s; a no is asked again at every start.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
from pathlib import Path

from daemon.engine.remembered import Remembered, source

TIMEOUT_SECONDS = 120  # loading torch and CAM++ takes ~3 s; a machine swapping hard, far longer


def failure(env: dict[str, str] | None = None, remembered: Remembered | None = None) -> str | None:
    """None when speaker labelling works here; otherwise why it does not, for the log."""
    remembered = remembered or Remembered(None)
    package = Path(__file__).parent
    key = remembered.key("speakers", importlib.metadata.version("torch"), importlib.metadata.version("numpy"),
                         importlib.metadata.version("scipy"), source(*sorted(package.glob("*.py")),
                                                                     *sorted(package.glob("*.pt"))))
    if remembered.get(key) == "works":
        return None
    why = _ask_a_child(env)
    if why is None:
        remembered.put(key, "works")
    return why


def _ask_a_child(env: dict[str, str] | None) -> str | None:
    try:
        done = subprocess.run([sys.executable, "-m", "daemon.engine.speakers.probe"], capture_output=True,
                              text=True, timeout=TIMEOUT_SECONDS, env=env)
    except subprocess.TimeoutExpired:
        return f"the speaker check did not finish in {TIMEOUT_SECONDS} s"
    except OSError as e:
        return f"the speaker check could not start: {e}"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        why = " (an instruction this CPU does not have)" if name == "SIGILL" else ""
        return f"the speaker check was killed by {name}{why}"
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    return f"the speaker check failed: {last}"


def _check() -> None:
    """Everything speaker labelling runs, on two voices made up of noise."""
    import numpy as np
    import torch

    from daemon.engine.speakers import campplus, clustering
    from daemon.engine.speakers.fbank import fbank
    from daemon.transcript import Voice

    model = campplus.load()
    noise = np.random.default_rng(0).standard_normal((2, 24_000)).astype(np.float32) * 0.1
    with torch.inference_mode():
        prints = model(torch.stack([fbank(torch.from_numpy(x)) for x in noise])).numpy()
    clustering.cluster([Voice(0.0, 1.5, p.astype("<f4").tobytes()) for p in prints], (1, 8))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # a check, not a job: leave the cores to the worker
    _check()
