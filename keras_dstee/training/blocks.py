"""Block sparsity: masks whose zeros come in whole blocks.

A block spans a kernel's last two axes, `(input, output)` in Keras's layout
(a `Dense` kernel is `(input, output)`, a `Conv2D` kernel
`(height, width, input, output)`). The mask machinery works on the grid of
blocks: a block's drop and grow scores are the sums of its positions'
scores, the budget counts whole blocks, and the grid's mask is repeated back
to the kernel's shape. `block_size=(4, 1)` (4 consecutive inputs of one
output unit) is the 1x4 pattern in TFLite's `(output, input)` weight layout
that its sparse `FullyConnected` kernel runs.
"""

import math
import numbers

from keras import ops

#: The block TFLite's sparse `FullyConnected` kernel accelerates, in Keras's
#: `(input, output)` layout.
TFLITE_DENSE_BLOCK = (4, 1)


def check_block_size(value):
    """`None` (unstructured) or a pair of positive ints, as a tuple."""
    if value is None:
        return None
    valid = (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in value)
    )
    if not valid:
        raise ValueError(
            "`block_size` must be None (unstructured) or a pair of positive "
            "ints (input, output) over each kernel's last two axes, e.g. "
            f"(4, 1) for TFLite's sparse Dense kernel. Received: block_size={value!r}"
        )
    block = (int(value[0]), int(value[1]))
    return None if block == (1, 1) else block


def fits(shape, block):
    """Whether a kernel of `shape` splits into whole blocks."""
    return block is not None and len(shape) >= 2 and shape[-2] % block[0] == 0 and shape[-1] % block[1] == 0


def grid_shape(shape, block):
    """The shape of the grid of blocks of a kernel of `shape`."""
    if block is None:
        return tuple(shape)
    return tuple(shape[:-2]) + (shape[-2] // block[0], shape[-1] // block[1])


def unit(block):
    """Positions per block."""
    return 1 if block is None else math.prod(block)


def to_blocks(x, block):
    """The sum of `x` over each block: a tensor of the grid's shape."""
    if block is None:
        return x
    shape = tuple(x.shape)
    rows, cols = block
    split = shape[:-2] + (shape[-2] // rows, rows, shape[-1] // cols, cols)
    return ops.sum(ops.reshape(x, split), axis=(-3, -1))


def from_blocks(x, block):
    """Each block's value repeated over its positions."""
    if block is None:
        return x
    rows, cols = block
    return ops.repeat(ops.repeat(x, rows, axis=-2), cols, axis=-1)

