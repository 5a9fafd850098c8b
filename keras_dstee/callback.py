"""The callbacks users pass to `fit`: `DSTEE` and the baselines."""

import contextlib
import numbers
import warnings

import keras

from keras_dstee.distributions import DISTRIBUTIONS
from keras_dstee.distributions import layer_densities
from keras_dstee.optimizer import SparseOptimizer
from keras_dstee.optimizer import find_sparse_optimizer


def _check_fraction(name, value, low, high, low_open, high_open):
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if valid:
        valid = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not valid:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"`{name}` must be a number in {interval}. Received: {name}={value!r}")


def _check_distribution(model):
    """Refuses the multi-replica setups the mask update does not handle,
    rather than training wrong: supported are JAX's `keras.distribution`
    and TensorFlow's `MirroredStrategy` (one machine, several devices)."""
    backend = keras.backend.backend()
    replicas, setup = 1, None
    if backend == "tensorflow":
        import tensorflow as tf

        strategy = getattr(model, "distribute_strategy", None)
        replicas = getattr(strategy, "num_replicas_in_sync", 1)
        if type(strategy) is tf.distribute.MirroredStrategy:
            return
        setup = type(strategy).__name__
    elif backend == "torch":
        import torch.distributed

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            replicas = torch.distributed.get_world_size()
            setup = "torch.distributed"
    if replicas > 1:
        raise ValueError(
            f"Sparse training with {setup} over {replicas} replicas is not "
            "supported: the mask update must see the gradient summed over all "
            "replicas, which is implemented for TensorFlow's "
            "`tf.distribute.MirroredStrategy` and for JAX's "
            "`keras.distribution` (`DataParallel`, `ModelParallel`). Use one "
            "of those, or train on one device."
        )


class SparseTraining(keras.callbacks.Callback):
    """Base of the sparse-training callbacks; use `DSTEE`, `RigL`, `SET` or
    `Static`.

    At the start of `fit` it wraps the model's optimizer in a
    `SparseOptimizer`, which masks the prunable kernels and updates the masks
    inside the compiled train step. At each epoch end it adds `sparsity`,
    `coverage` and `drop_fraction` to the logs (progress bar, `History`,
    `CSVLogger`). A later `fit` on the same model continues from the existing
    masks, counters and step.
    """

    method = None

    def __init__(
        self,
        sparsity=0.9,
        distribution="erk",
        update_freq=100,
        drop_fraction=0.3,
        end=0.75,
        rescale=True,
        seed=None,
        exclude=None,
        include_embeddings=False,
        dense_first=False,
        dense_last=False,
        **method_args,
    ):
        super().__init__()
        _check_fraction("sparsity", sparsity, 0, 1, False, True)
        if not isinstance(distribution, dict) and distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"Unknown `distribution={distribution!r}`. Expected one of "
                f"{DISTRIBUTIONS}, or a dict of layer name/regex to sparsity."
            )
        if isinstance(update_freq, bool) or not isinstance(update_freq, numbers.Integral) or update_freq < 1:
            raise ValueError(
                "`update_freq` must be an integer >= 1 (optimizer steps "
                f"between mask updates). Received: update_freq={update_freq!r}"
            )
        _check_fraction("drop_fraction", drop_fraction, 0, 1, False, False)
        _check_fraction("end", end, 0, 1, True, False)
        self.sparsity = float(sparsity)
        self.distribution = distribution
        self.update_freq = int(update_freq)
        self.drop_fraction = float(drop_fraction)
        self.end = float(end)
        self.rescale = rescale
        self.seed = seed
        self.exclude = exclude
        self.include_embeddings = include_embeddings
        self.dense_first = dense_first
        self.dense_last = dense_last
        self.method_args = method_args
        self.optimizer = None
        self._model_id = None
        self._schedule_pending = False
        self._skipped_updates = 0

    def on_train_begin(self, logs=None):
        model = self.model
        if self._model_id not in (None, id(model)):
            raise ValueError(
                f"This {type(self).__name__} callback already trains another "
                "model. Create one callback per model."
            )
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None or not getattr(model, "compiled", False):
            raise ValueError(
                "The model must be compiled with an optimizer before "
                f"training with {type(self).__name__}: call `model.compile(...)`."
            )
        _check_distribution(model)
        existing = find_sparse_optimizer(optimizer)
        if existing is not None:
            # A second `fit`, or a model loaded with its sparse state.
            self._warn_if_settings_differ(existing)
            self.optimizer = existing
        else:
            self.optimizer = self._wrap(model, optimizer)
        self._model_id = id(model)
        self._schedule_pending = True
        self._skipped_updates = int(keras.ops.convert_to_numpy(self.optimizer.skipped_updates))

    def _warn_if_settings_differ(self, existing):
        """A model already training sparse keeps its masks and settings."""
        wanted = dict(method=self.method, update_freq=self.update_freq, drop_fraction=self.drop_fraction)
        wanted.update(self.method_args)
        if self.method == "static":
            wanted = {"method": "static"}
        differ = {k: v for k, v in wanted.items() if getattr(existing, k) != v}
        if differ:
            kept = ", ".join(f"{k}={getattr(existing, k)!r}" for k in differ)
            warnings.warn(
                f"The model already trains sparse ({kept}); {type(self).__name__} "
                "continues with those settings and its masks, not "
                f"{', '.join(f'{k}={v!r}' for k, v in differ.items())}.",
                stacklevel=3,
            )

    def _wrap(self, model, optimizer):
        """Puts a `SparseOptimizer` around the user's optimizer (inside the
        `LossScaleOptimizer` under mixed precision, which then unscales the
        gradients and skips non-finite steps for both)."""
        loss_scale = None
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            loss_scale, optimizer = optimizer, optimizer.inner_optimizer
        densities = layer_densities(
            model,
            self.sparsity,
            self.distribution,
            exclude=self.exclude,
            include_embeddings=self.include_embeddings,
            dense_first=self.dense_first,
            dense_last=self.dense_last,
        )
        # Under `tf.distribute`, the wrapper's variables are mirrored like the
        # model's: create them in the model's strategy scope.
        strategy = getattr(model, "distribute_strategy", None)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            wrapper = SparseOptimizer(
                optimizer,
                densities,
                method=self.method,
                update_freq=self.update_freq,
                drop_fraction=self.drop_fraction,
                end_step=self._total_steps(),
                rescale=self.rescale,
                seed=self.seed,
                **self.method_args,
            )
            wrapper.build(model.trainable_variables)
            wrapper.install()
        if loss_scale is None:
            model.optimizer = wrapper
        else:
            loss_scale.inner_optimizer = wrapper
        # So `model.save` stores the wrapper and its state, not the original
        # (a LossScaleOptimizer given to `compile` now holds the wrapper).
        compile_config = getattr(model, "_compile_config", None)
        if compile_config is not None and compile_config.config.get("optimizer") is not model.optimizer:
            compile_config.config["optimizer"] = wrapper
        # The train step may have been traced with the old optimizer.
        model.make_train_function(force=True)
        return wrapper

    def _total_steps(self):
        steps = self.params.get("steps")
        if not steps:
            raise ValueError(
                f"{type(self).__name__} needs the number of steps per epoch to "
                "plan its schedule, and `fit` could not infer it from the "
                "data. Pass `steps_per_epoch` to `fit`."
            )
        return steps * self.params["epochs"]

    def on_epoch_begin(self, epoch, logs=None):
        if not self._schedule_pending:
            return
        # The schedule spans this `fit`: `epochs` epochs counted from epoch 0,
        # so a run resumed with `initial_epoch` keeps its original schedule.
        self._schedule_pending = False
        steps = self.params["steps"]
        step = int(keras.ops.convert_to_numpy(self.optimizer.step))
        start = step - epoch * steps
        end = start + max(1, round(self.end * self._total_steps()))
        self.optimizer.start_step.assign(start)
        self.optimizer.end_step_variable.assign(end)
        self.optimizer.end_step = end

    def on_epoch_end(self, epoch, logs=None):
        # `self.model` syncs the JAX state before the variables are read.
        if logs is None or find_sparse_optimizer(self.model.optimizer) is not self.optimizer:
            return
        stats = self.optimizer.sparsity_stats()
        skipped = stats.pop("skipped_updates")
        if skipped > self._skipped_updates:
            warnings.warn(
                f"{type(self).__name__}: {skipped - self._skipped_updates} mask "
                f"update(s) skipped in epoch {epoch + 1}: the gradient was not "
                "finite. Masks and budgets are unchanged.",
                stacklevel=2,
            )
        self._skipped_updates = skipped
        logs.update(stats)


class DSTEE(SparseTraining):
    """Dynamic sparse training with exploration and exploitation (DST-EE).

    Trains a model sparse from scratch at a fixed number of nonzero weights.
    Every `update_freq` steps it drops the active weights with the smallest
    magnitude (exploitation) and grows as many positions with the highest
    acquisition score `|g| / mean|g| + exploration * sqrt(ln t / (N + epsilon))`,
    where `g` is the dense gradient, `t` the optimizer step and `N` how many
    steps the position has been active: positions never tried get a bonus
    (exploration).

    ```python
    model.fit(x, y, epochs=10, callbacks=[keras_dstee.DSTEE(sparsity=0.9)])
    ```

    Args:
        sparsity: fraction of the prunable weights that are zero, in [0, 1).
        distribution: how the sparsity is split across layers: `"erk"`
            (Erdos-Renyi-Kernel: small layers denser), `"er"`, `"uniform"`,
            or a dict of layer name or regex (whole-name match; first match
            wins) to that layer's sparsity; unmatched layers stay dense.
        update_freq: optimizer steps between two mask updates.
        drop_fraction: fraction of each kernel's active weights replaced at the
            first update; decays to 0 by `end` (cosine).
        end: fraction of the training steps of `fit` after which the masks
            stay fixed, in (0, 1].
        exploration: weight `c` of the exploration bonus. 0 is RigL.
        epsilon: keeps the bonus finite for positions never active.
        normalize_gradients: divide |g| by its per-layer mean, so that
            `exploration` is scale-free across layers and models; False is the
            paper's unnormalised score.
        rescale: multiply the kept initial weights by `1 / sqrt(density)`, so
            the sparse network starts with the variance of the dense one.
        seed: int seeding the initial masks; `None` picks one at random.
        exclude: layer names, regular expressions (matched against whole
            layer names) or layer classes whose weights stay dense.
        include_embeddings: whether `Embedding` tables are pruned too.
        dense_first: keep the first prunable layer (the stem) dense.
        dense_last: keep the last prunable layer (the classifier) dense.
    """

    method = "dstee"

    def __init__(
        self,
        sparsity=0.9,
        distribution="erk",
        update_freq=100,
        drop_fraction=0.3,
        end=0.75,
        exploration=1.0,
        epsilon=1.0,
        normalize_gradients=True,
        rescale=True,
        seed=None,
        exclude=None,
        include_embeddings=False,
        dense_first=False,
        dense_last=False,
    ):
        _check_fraction("exploration", exploration, 0, float("inf"), False, True)
        _check_fraction("epsilon", epsilon, 0, float("inf"), False, True)
        super().__init__(
            sparsity=sparsity,
            distribution=distribution,
            update_freq=update_freq,
            drop_fraction=drop_fraction,
            end=end,
            rescale=rescale,
            seed=seed,
            exclude=exclude,
            include_embeddings=include_embeddings,
            dense_first=dense_first,
            dense_last=dense_last,
            exploration=float(exploration),
            epsilon=float(epsilon),
            normalize_gradients=bool(normalize_gradients),
        )


class RigL(SparseTraining):
    """RigL (Evci et al., 2020): grow the positions with the largest |gradient|.

    Same machinery and arguments as `DSTEE` without the exploration bonus;
    `RigL(seed=s)` gives the same masks and weights as
    `DSTEE(exploration=0, seed=s)`.
    """

    method = "rigl"


class SET(SparseTraining):
    """SET (Mocanu et al., 2018): grow positions chosen at random.

    Same machinery and arguments as `DSTEE` without the exploration bonus.
    """

    method = "set"


class Static(SparseTraining):
    """Static sparse training: a fixed random mask, never updated.

    Args:
        sparsity, distribution, rescale, seed, exclude, include_embeddings,
        dense_first, dense_last: as for `DSTEE`.
    """

    method = "static"

    def __init__(
        self,
        sparsity=0.9,
        distribution="erk",
        rescale=True,
        seed=None,
        exclude=None,
        include_embeddings=False,
        dense_first=False,
        dense_last=False,
    ):
        super().__init__(
            sparsity=sparsity,
            distribution=distribution,
            rescale=rescale,
            seed=seed,
            exclude=exclude,
            include_embeddings=include_embeddings,
            dense_first=dense_first,
            dense_last=dense_last,
        )
