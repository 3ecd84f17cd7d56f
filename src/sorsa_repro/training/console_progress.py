"""What training shows while it runs: one bar in optimizer steps, and a line when the exports start.

Lightning's ``TQDMProgressBar`` counts micro-batches per epoch: it draws an empty ``Training: 0/?`` bar when
training starts and again when the epoch starts (its reset), before the epoch's own bar, whose total is not
the run's (with gradient accumulation it runs past it into ``3/?``). ``TrainingBar`` draws one bar for the
whole fit, in optimizer steps out of the run's steps (a resumed run starts at its checkpoint's step).

After the last step the run writes its final checkpoint and its exports (adapter/, adapter_lora/, merged/):
tens of seconds for larger models with nothing on the screen. ``ExportNotice`` says so when training ends;
``task._export`` logs the exports' times.
"""

from __future__ import annotations

import logging
import sys

from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

log = logging.getLogger("sorsa_repro.training")


class TrainingBar(TQDMProgressBar):
    def on_train_start(self, trainer, *_) -> None:
        self.train_progress_bar = Tqdm(
            desc="Training",
            total=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None,
            initial=trainer.global_step,
            unit="step",
            position=(2 * self.process_position),
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, *_) -> None:  # one bar for all epochs
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step  # optimizer steps: a micro-batch of an accumulation window moves nothing
        if step != bar.n and self._should_update(step, bar.total) and not bar.disable:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # (redraws the bar)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_train_end(self, *_) -> None:
        if self._train_progress_bar is not None:
            self._train_progress_bar.close()


class ExportNotice(Callback):
    """One line when the fit ends: what is written next."""

    def __init__(self, exports: list[str]):
        self.exports = exports

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            log.info(
                "step %d: training done; writing the checkpoint (unless written at this step)%s",
                trainer.global_step,
                f" and {', '.join(self.exports)}" if self.exports else "",
            )
