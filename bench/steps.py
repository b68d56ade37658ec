"""Step timing of Lightning runs, for the benchmarks that train (throughput, data,
recipe_step): a callback that records when each training batch starts and ends, and a
trainer with nothing else attached."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L


class StepTimes(L.Callback):
    """Wall-clock times (``time.time()``) of training batch starts and ends and of predict's
    start and end; written to ``out`` (JSON) when the stage ends, if given."""

    def __init__(self, out: str | None = None) -> None:
        self.out = out
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.predict: list[float] = []

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts.append(time.time())

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.ends.append(time.time())

    def on_predict_start(self, *args: Any, **kwargs: Any) -> None:
        self.predict.append(time.time())

    def on_predict_end(self, *args: Any, **kwargs: Any) -> None:
        self.predict.append(time.time())
        self._save()

    def on_train_end(self, *args: Any, **kwargs: Any) -> None:
        self._save()

    def _save(self) -> None:
        if self.out is not None:
            data = {"starts": self.starts, "ends": self.ends, "predict": self.predict}
            Path(self.out).write_text(json.dumps(data))

    def step_seconds(self, skip: int = 0) -> list[float]:
        """Seconds of each step after the first ``skip``."""
        return [e - s for s, e in zip(self.starts, self.ends, strict=False)][skip:]

    def waits(self) -> list[float]:
        """Seconds between one step's end and the next one's start: the data wait."""
        return [s - e for e, s in zip(self.ends, self.starts[1:], strict=False)]


def trainer(max_steps: int, precision: str, clock: StepTimes, **kwargs: Any) -> L.Trainer:
    """A trainer that only trains: no logger, checkpoints, progress bar, summary or
    validation."""
    return L.Trainer(
        max_steps=max_steps,
        precision=precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[clock],
        **kwargs,
    )
