"""Practical training: bundled tasks, the optimizers compared on them, and the training loop.

- :mod:`.tasks`: the offline tasks (:data:`TASKS`, :func:`make_task`);
- :mod:`.optimizers`: AdamW, ``torch.optim.Muon`` (bf16 and float32 Newton–Schulz) and
  ``RegMuon(model)``, all over RegMuon's routing (:data:`OPTIMIZERS`, :func:`make_optimizers`);
- :mod:`.loop`: :func:`train` (schedules, curves, held-out losses, wall time, the Hamiltonian).

Example:
    >>> # xdoctest: +SKIP
    >>> r = train("digits", "regmuon", lr=0.01, steps=150, seed=0)
    >>> r["test_loss"], r["test_acc"], r["wall_s"]
"""

from .loop import SCHEDULES, lr_factor, train
from .optimizers import OPTIMIZERS, MatrixMuon, make_optimizers, matrix_views, routed
from .tasks import TASKS, Task, make_task
from .tasks import gpt2_config as gpt2_config

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "TASKS",
    "MatrixMuon",
    "Task",
    "lr_factor",
    "make_optimizers",
    "make_task",
    "matrix_views",
    "routed",
    "train",
]
