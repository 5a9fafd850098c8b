"""What `shrink=True` adds to a callback's `fit`: the checks before the
first step, the rebuilds at epoch ends (`schedule.shrink_due` says when),
and what each rebuild reports."""

import time

import keras
from keras.src.utils import io_utils

from keras_dstee.structure import channels
from keras_dstee.structure import flops
from keras_dstee.structure import rebuilding
from keras_dstee.training import schedule
from keras_dstee.training import shrinking
from keras_dstee.training.optimizer import find_sparse_optimizer


class FitShrinking:
    """One callback's shrinking during `fit`; `owner` names the callback
    in messages."""

    def __init__(self, owner):
        self.owner = owner
        self.rebuilds = []
        self._callback_list = None
        self._epoch_started = None

    def check(self, model, groups, callback_list):
        """Refuses, before the first step, what `shrink=True` can't do."""
        channels.check_graph_model(model, f"{self.owner}(shrink=True)")
        problems = rebuilding.unrebuildable(model, groups)
        if problems:
            raise ValueError(
                f"{self.owner}(shrink=True) can't narrow "
                + "; ".join(f"{name} ({why})" for name, why in problems)
                + ": use the built-in layer classes there, or leave `shrink` out and call "
                "`keras_dstee.slim(model)` after training."
            )
        others = getattr(callback_list, "callbacks", [])
        if any(isinstance(c, keras.callbacks.BackupAndRestore) for c in others):
            raise ValueError(
                f"{self.owner}(shrink=True) can't be combined with BackupAndRestore: "
                "its backup of a shrunk model does not load into the full-width model a "
                "restarted script builds. Save full models instead "
                "(`keras.callbacks.ModelCheckpoint('run.keras')`) and resume with "
                "`keras.saving.load_model` and `fit(..., initial_epoch=...)`."
            )
        self._callback_list = callback_list

    def epoch_begins(self):
        self._epoch_started = time.perf_counter()

    def epoch_ends(self, model, optimizer, epoch, params):
        """Rebuilds `model` when due; returns the `SparseOptimizer` that
        trains it from now on (`optimizer` when nothing was done)."""
        steps = params.get("steps")
        step_s = None
        if steps and self._epoch_started is not None:
            step_s = (time.perf_counter() - self._epoch_started) / steps
        if self.rebuilds and self.rebuilds[-1]["step_s_after"] is None:
            self.rebuilds[-1]["step_s_after"] = step_s
            self._say(params, f"{self.owner}: after the rebuild: {_seconds(step_s)} per step.")
        if not self._due(optimizer):
            return optimizer
        flops_before = flops.dense_macs(model)
        started = time.perf_counter()
        record = shrinking.shrink_with_record(model)
        rebuild_s = time.perf_counter() - started
        for callback in getattr(self._callback_list, "callbacks", []):
            # EarlyStopping(restore_best_weights=True) restores into the smaller model.
            best = getattr(callback, "best_weights", None)
            if isinstance(callback, keras.callbacks.EarlyStopping) and best is not None:
                callback.best_weights = record.slice_weights(best)
        flops_after = flops.dense_macs(model)
        planned = optimizer.channel_plan.original_total
        self.rebuilds.append(
            {
                "epoch": epoch + 1,
                "step": int(keras.ops.convert_to_numpy(optimizer.step)),
                "channels_before": record.channels_before,
                "channels_after": record.channels_after,
                "channels_planned": planned,
                "flops_before": flops_before,
                "flops_after": flops_after,
                "step_s_before": step_s,
                "step_s_after": None,
                "rebuild_s": rebuild_s,
            }
        )
        self._say(
            params,
            f"{self.owner}: epoch {epoch + 1}: the model shrank: removable channels "
            f"{record.channels_before} -> {record.channels_after} (of {planned}), "
            f"multiply-adds per example {flops_before / 1e6:.1f}M -> {flops_after / 1e6:.1f}M "
            f"({flops_after / max(flops_before, 1):.2f}x); {_seconds(step_s)} per step before; "
            f"rebuilt in {_seconds(rebuild_s)} (a compiled step also recompiles next).",
        )
        return find_sparse_optimizer(record.optimizer)

    @staticmethod
    def _due(optimizer):
        """`schedule.shrink_due` from the optimizer's channel state."""
        cuttable = int(shrinking.channels_to_cut(optimizer).sum())
        step, start, end = (
            int(keras.ops.convert_to_numpy(v)) for v in (optimizer.step, optimizer.start_step, optimizer.end_step_variable)
        )
        over = schedule.removal_over(step, start, end, optimizer.channel_end)
        return schedule.shrink_due(cuttable, optimizer.channel_plan.total, over)

    @staticmethod
    def _say(params, text):
        if params.get("verbose", 1):
            io_utils.print_msg(text)


def _seconds(value):
    return "?" if value is None else f"{value:.3f} s"
