"""Training: the inner loop, the outer loop, baselines, checkpoints and data parallelism (docs/method.md#training).

``recursivemas train`` (``python -m recursivemas train`` under torchrun) run :func:`train_from_files`; from Python::

    from recursivemas import System
    from recursivemas.train import TrainConfig, load_for_system, train

    system = System.from_config("system.yaml")
    records = load_for_system(system, "train.jsonl")
    summary = train(system, records, TrainConfig(stage="all", steps=200), "runs/seq")
"""

from recursivemas.train.checkpoint import CheckpointError, latest_checkpoint
from recursivemas.train.data import DataError, load_for_system, load_records, synthetic_records
from recursivemas.train.recipe import TrainConfig, TrainingError, train, train_from_files

__all__ = [
    "CheckpointError",
    "DataError",
    "TrainConfig",
    "TrainingError",
    "latest_checkpoint",
    "load_for_system",
    "load_records",
    "synthetic_records",
    "train",
    "train_from_files",
]
