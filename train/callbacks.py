"""The callbacks ``vq-train`` adds to Lightning's (one module each; imported here for
configs and code that name them ``train.callbacks.X``)."""

from train.checkpointing import LastCheckpoint, RandomState
from train.code_writer import CodeWriter
from train.export import ExportBest
from train.monitor import CodebookMonitor

__all__ = ["CodeWriter", "CodebookMonitor", "ExportBest", "LastCheckpoint", "RandomState"]
