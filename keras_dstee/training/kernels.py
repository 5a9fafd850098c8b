"""One kernel trained sparse: its record (`SparseKernel`), the positions
its budget allows, its initial mask, and the optimizer variables (mask,
activity counter) that hold its state."""

import dataclasses
import math

import numpy as np
from keras import ops

from keras_dstee import arguments
from keras_dstee.training import blocks
from keras_dstee.training import updates
from keras_dstee.training.constraints import MaskConstraint
from keras_dstee.training.distributions import active_count

#: How the initial masks are chosen: at random (training from scratch) or
#: by weight magnitude (sparsifying a pretrained model).
INITIAL_MASKS = ("random", "magnitude")


def resolve_rescale(rescale, initial_mask):
    """`rescale` as given, or by default only for random initial masks:
    rescaling suits a fresh dense initialisation, not trained weights."""
    return initial_mask == "random" if rescale is None else arguments.boolean("rescale", rescale)


@dataclasses.dataclass(eq=False)
class SparseKernel:
    """One kernel trained sparse and the state that moves with it.

    Attributes:
        index: the kernel's position among the trainable variables.
        variable, mask, counter: the kernel, its 0/1 mask and its activity
            counter (by default the steps each position has been active;
            the method's `activity` says).
        slots: the inner optimizer's slots for it (momentum, Adam's m, v).
        initial_active: positions active when training starts.
        active: positions active once the method's schedule ends (the same
            as `initial_active` except for pruning methods).
        max_drop, max_grow: static bounds of one update in blocks (positions
            when unstructured), as `top_k` needs.
        block: the block shape over the last two axes, or None (unstructured).
        dense_size: positions the kernel had before the model shrank
            (`keras_dstee.shrink`); None while it has all of them.
        cut_ever_active: of the positions shrinking cut away, how many were
            ever active (they count in the logged `coverage`).
    """

    index: int
    variable: object
    mask: object
    counter: object
    slots: list
    initial_active: int
    active: int
    max_drop: int
    max_grow: int
    block: tuple = None
    dense_size: int = None
    cut_ever_active: int = 0

    @property
    def size(self):
        return math.prod(self.variable.shape)

    @property
    def original_size(self):
        """Positions before any shrinking: what sparsity is measured over."""
        return self.size if self.dense_size is None else self.dense_size

    @property
    def blocks(self):
        """How many blocks the kernel has (positions when unstructured)."""
        return self.size // blocks.unit(self.block)

    @property
    def state(self):
        """What a mask update reads and writes, in this order."""
        return [self.mask, self.counter, self.variable, *self.slots]


def active_positions(shape, density, block):
    """Positions a kernel of `shape` keeps at `density`: whole blocks when
    `block` fits its shape, at least one."""
    if not blocks.fits(shape, block):
        return active_count(shape, density)
    return active_count(blocks.grid_shape(shape, block), density) * blocks.unit(block)


def random_mask(shape, block, active, seed, index):
    """Exactly `active` random positions (whole blocks) of a kernel of
    `shape`, as a 0/1 float32 array; numpy makes it the same on every
    backend, seeded by the optimizer's `seed` and the kernel's `index`."""
    rng = np.random.default_rng([seed, index])
    grid = blocks.grid_shape(shape, block)
    cells = math.prod(grid)
    flat = np.zeros(cells, "float32")
    flat[rng.permutation(cells)[: active // blocks.unit(block)]] = 1.0
    initial = flat.reshape(grid)
    if block is not None:
        initial = np.repeat(np.repeat(initial, block[0], axis=-2), block[1], axis=-1)
    return initial


def add_kernel(optimizer, index, variable, initial_active, active, block):
    """Creates one kernel's mask and counter as `optimizer`'s variables,
    masks the kernel with a `MaskConstraint`, and returns its record.

    The update bounds are in blocks (positions when unstructured): a method
    that grows swaps at most `drop_fraction` of the initial budget at once;
    removing channels can move any number of positions.
    """
    shape = tuple(variable.shape)
    # Passed as the initializer: an assign right after creation is lost when
    # the build runs inside a TF trace.
    initial = random_mask(shape, block, initial_active, optimizer.seed, index)
    prefix = variable.path.replace("/", "_")
    # Under `keras.distribution`, mask and counter are laid out (sharded)
    # like their kernel.
    layout = getattr(variable, "_layout", None)
    mask = optimizer.add_variable(
        shape=shape,
        dtype="float32",
        initializer=lambda shape, dtype: ops.convert_to_tensor(initial, dtype),
        layout=layout,
        name=f"{prefix}_mask",
    )
    counter = optimizer.add_variable(shape=shape, dtype="float32", layout=layout, name=f"{prefix}_active_steps")
    # The inner optimizer's slots for the kernel (named after its path).
    slots = [
        s
        for s in optimizer.inner_optimizer.variables
        if s.name.startswith(prefix + "_") and tuple(s.shape) == shape
    ]
    variable.constraint = MaskConstraint(mask, variable.constraint)
    cells = math.prod(blocks.grid_shape(shape, block))
    per_block = blocks.unit(block)
    initial_blocks, final_blocks = initial_active // per_block, active // per_block
    removes_channels = optimizer.channel_sparsity > 0
    max_grow = math.ceil(optimizer.drop_fraction * initial_blocks) if optimizer.method.grows else 0
    if removes_channels:
        max_grow = cells
    return SparseKernel(
        index=index,
        variable=variable,
        mask=mask,
        counter=counter,
        slots=slots,
        initial_active=initial_active,
        active=active,
        max_drop=cells if removes_channels else min(cells, max_grow + initial_blocks - final_blocks),
        max_grow=max_grow,
        block=block,
    )


def largest_mask(weight, kernel):
    """The 0/1 mask of the kernel's `initial_active` largest-magnitude
    weights (whole blocks by block L1)."""
    block = kernel.block
    scores = blocks.to_blocks(ops.abs(ops.cast(weight, "float32")), block)
    cells = math.prod(scores.shape)
    drop = cells - kernel.initial_active // blocks.unit(block)
    if drop == 0:
        return ops.ones_like(weight, "float32")
    mask, _ = updates.drop_and_grow(scores, ops.ones_like(scores), None, drop, drop, 0, 0)
    return blocks.from_blocks(mask, block)
