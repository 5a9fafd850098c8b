"""Sparse-training methods as small classes, and their registry.

A method says how a kernel's mask changes at a mask update: which active
weights to drop (the lowest `drop_scores`) and which inactive positions to
grow (the highest `grow_scores`). Everything else, the budget, the schedule,
the masks and counters in the compiled step, is `SparseOptimizer`'s. Each
class holds only its own settings and overrides only what differs, so a new
rule is one subclass and one `register` call:

```python
class NoisyRigL(keras_dstee.methods.RigL):
    '''Grow by |gradient| times a random number.'''

    def grow_scores(self, weight, grad, counter, step, seed):
        noise = keras.random.uniform(keras.ops.shape(grad), seed=seed)
        return keras.ops.abs(grad) * noise

keras_dstee.methods.register("noisy_rigl", NoisyRigL)
model.fit(x, y, callbacks=[keras_dstee.SparseTraining("noisy_rigl", sparsity=0.9)])
```

Scores are `keras.ops` functions of tensors with the kernel's shape, so a
method runs unchanged inside the compiled step on every backend.
"""

import math

import keras
from keras import ops

from keras_dstee import arguments
from keras_dstee.training import schedule
from keras_dstee.training import updates

_REGISTRY = {}


class Method:
    """Base of the methods: magnitude drop; subclasses define the growth.

    Attributes a subclass may set:
        name: the registered name, used in saved configs.
        updates_masks: False for a method whose masks never change.
        grows: False for a method that only prunes (no `grow_scores`).
        initial_sparsity: None for a fixed budget; for a pruning method, the
            sparsity its cubic density schedule starts from.
        setting_names: the constructor's settings (saved, compared).
    """

    name = None
    updates_masks = True
    grows = True
    initial_sparsity = None
    setting_names = ()

    def drop_scores(self, weight, grad):
        """Higher is kept: the active weights with the lowest scores are
        dropped. Default: the weight magnitude (exploitation)."""
        return ops.abs(ops.cast(weight, "float32"))

    def grow_scores(self, weight, grad, counter, step, seed):
        """Higher grows first, among inactive positions.

        Args:
            weight: the kernel after the drop (inactive positions are 0).
            grad: the dense gradient of the current batch.
            counter: each position's activity so far, as `activity` counts
                it (by default, the steps it has been active).
            step: the optimizer step (scalar tensor, from 1).
            seed: a seed for `keras.random`, new at every update and kernel.

        A method whose `grow_scores` also takes a `progress` argument gets
        how far the mask-update schedule has got (a scalar tensor, 0 at
        its start, 1 at its end); one that takes `dense_size` gets, for a
        kernel the model shrank (`shrink=True`), how many positions it had
        before (the cut ones had gradient 0), so a mean over the kernel
        stays the masked run's.
        """
        raise NotImplementedError(f"{type(self).__name__} must define `grow_scores`.")

    def activity(self, steps):
        """What one period between mask updates adds to the counter of a
        position active through it; `steps` is the period's length in
        optimizer steps (a float tensor). Default: the steps."""
        return steps

    def get_config(self):
        return {name: getattr(self, name) for name in self.setting_names}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(type(self))

    def __repr__(self):
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({settings})"


class Static(Method):
    """A fixed random mask, never updated."""

    name = "static"
    updates_masks = False


class SET(Method):
    """SET (Mocanu et al., 2018): grow positions chosen at random."""

    name = "set"

    def grow_scores(self, weight, grad, counter, step, seed):
        return keras.random.uniform(ops.shape(weight), seed=seed)


class RigL(SET):
    """RigL (Evci et al., 2020): grow the largest |gradient|."""

    name = "rigl"

    def grow_scores(self, weight, grad, counter, step, seed):
        return ops.abs(ops.cast(grad, "float32"))


class DSTEE(RigL):
    """DST-EE (Huang et al., 2023): RigL's gradient plus a coverage bonus,
    `|g| / mean|g| + exploration * sqrt(ln t / (N + epsilon))`, `t` the
    optimizer step, `N` how long the position has been active.

    The paper's text does not fix every detail of the score; the free
    choices of our reconstruction are settings, each tested, and the
    defaults are the ones `benchmarks/RESULTS.md` supports.

    Args:
        exploration: weight `c` of the bonus; 0 grows exactly like RigL
            (whatever the other settings).
        epsilon: keeps the bonus finite for positions never active.
        normalize_gradients: divide |g| by its per-kernel mean so that
            `exploration` is scale-free; False is the paper's raw |g|.
        count: what `N` counts: `"steps"` the position has been active, or
            mask-update `"periods"` it has been active through (so a
            position tried once keeps a much larger bonus).
        bonus_decay: `"none"`, or `"cosine"`: the bonus fades with the
            drop fraction's cosine, from full at the first mask update to 0
            at `end`.
    """

    name = "dstee"
    setting_names = ("exploration", "epsilon", "normalize_gradients", "count", "bonus_decay")

    def __init__(self, exploration=1.0, epsilon=1.0, normalize_gradients=True, count="steps", bonus_decay="none"):
        self.exploration = arguments.number("exploration", exploration, 0, math.inf, high_open=True)
        self.epsilon = arguments.number("epsilon", epsilon, 0, math.inf, high_open=True)
        self.normalize_gradients = arguments.boolean("normalize_gradients", normalize_gradients)
        self.count = arguments.choice("count", count, ("steps", "periods"))
        self.bonus_decay = arguments.choice("bonus_decay", bonus_decay, ("none", "cosine"))

    def activity(self, steps):
        return steps if self.count == "steps" else ops.ones_like(steps)

    def grow_scores(self, weight, grad, counter, step, seed, progress=None, dense_size=None):
        scale = 1.0
        if self.bonus_decay == "cosine" and progress is not None:
            scale = schedule.cosine_decay(progress)
        return updates.grow_scores(
            grad, counter, step, self.exploration, self.epsilon, self.normalize_gradients, scale, dense_size
        )


class GMP(Method):
    """Gradual magnitude pruning (Zhu & Gupta, 2017, "To prune, or not to
    prune"): from `initial_sparsity` the sparsity rises to the target along
    `s_t = s_f + (s_i - s_f) * (1 - progress)**3`, each update dropping the
    smallest weights; nothing is regrown (tfmot's `PolynomialDecay`,
    power 3).

    Args:
        initial_sparsity: sparsity when pruning begins, in [0, 1); 0 trains
            dense first.
    """

    name = "gmp"
    grows = False
    setting_names = ("initial_sparsity",)

    def __init__(self, initial_sparsity=0.0):
        self.initial_sparsity = arguments.number("initial_sparsity", initial_sparsity, 0, 1, high_open=True)


class GraNet(RigL):
    """GraNet (Liu et al., 2021, "Sparse Training via Boosting Pruning
    Plasticity with Neuroregeneration"): GMP's cubic schedule from
    `initial_sparsity` to the target, and at every update as many weights as
    the cosine drop fraction says are also dropped by magnitude and regrown
    by |gradient| (zero-cost neuroregeneration), so the connectivity keeps
    changing while the density follows the schedule.

    Args:
        initial_sparsity: sparsity of the random mask training starts from.
    """

    name = "granet"
    setting_names = ("initial_sparsity",)

    def __init__(self, initial_sparsity=0.5):
        self.initial_sparsity = arguments.number("initial_sparsity", initial_sparsity, 0, 1, high_open=True)


def register(name, cls):
    """Makes `cls` (a `Method` subclass) available by `name` to
    `SparseTraining`, `SparseOptimizer`, saved models and the examples."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"`cls` must be a subclass of keras_dstee.methods.Method. Received: {cls!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string. Received: {name!r}")
    cls.name = name
    _REGISTRY[name] = cls
    return cls


def names():
    """The registered method names."""
    return tuple(_REGISTRY)


def registered(name):
    """The `Method` class registered under `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown `method={name!r}`. Expected one of {names()}, or a Method.")
    return _REGISTRY[name]


def get(method, **settings):
    """A `Method` from a registered name, a `Method` subclass (built with
    `settings`) or an instance (returned as it is, `settings` must be empty)."""
    if isinstance(method, str):
        method = registered(method)
    if isinstance(method, type) and issubclass(method, Method):
        unknown = sorted(set(settings) - set(method.setting_names))
        if unknown:
            raise ValueError(
                f"Method {method.name!r} does not take `{'`, `'.join(unknown)}`."
                + (f" Its settings: {method.setting_names}." if method.setting_names else "")
            )
        return method(**settings)
    if isinstance(method, Method):
        if settings:
            raise ValueError(f"Give settings to the method itself, not beside {method!r}: {sorted(settings)}.")
        return method
    raise ValueError(f"`method` must be a name in {names()}, a Method subclass or instance. Received: {method!r}")


for _cls in (Static, SET, RigL, DSTEE, GMP, GraNet):
    register(_cls.name, _cls)
