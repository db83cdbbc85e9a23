"""Does speaker labelling run on this machine? Asked of a child process, once per worker.

A native library built for instructions this CPU lacks dies with SIGILL, which no `except` can
catch: the child takes the blow, and the worker transcribes without speakers and says why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

TIMEOUT_SECONDS = 120  # loading torch and CAM++ takes ~3 s; a machine swapping hard, far longer


def failure(env: dict[str, str] | None = None) -> str | None:
    """None when speaker labelling works here; otherwise why it does not, for the log."""
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
