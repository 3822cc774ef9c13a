"""Test-session settings shared by tests/, the library's doctests and the testbed's.

`make test` runs two pytest-xdist workers on a 2-core machine. Each torch process would otherwise
start as many threads as there are cores, so the two workers oversubscribe the CPU (measured: the
AWQ rebuild test takes 3.5 s alone and 21.7 s in the suite). One thread per worker, and per process
a test starts, keeps the suite within its time budget.
"""

import os


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocesses tests start
        import torch

        torch.set_num_threads(1)


# Stub files at old module paths that replace themselves with the moved testbed module
# (`quantpilot._moved`): the testbed's own doctests cover that code, collected under its real name.
collect_ignore = [
    "quantpilot/datasets.py",
    "quantpilot/models/digits_cnn.py",
    "quantpilot/models/resnet.py",
    "quantpilot/models/imagenet_samples.py",
]
