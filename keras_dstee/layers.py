"""Which weights of which layers are pruned.

Built-in layers are looked up in `PRUNABLE_WEIGHTS`. A custom layer takes part
by defining `get_prunable_weights()`, returning the variables to keep sparse:

```python
class MyLayer(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 8))

    def get_prunable_weights(self):
        return [self.w]
```
Biases, normalisation parameters and every other 1-D weight stay dense.
"""

import re

from keras_dstee import arguments
from keras_dstee import layer_kinds

# The weights trained sparse, by layer kind (`layer_kinds.KINDS`).
PRUNABLE_WEIGHTS = layer_kinds.prunable_weights()
EMBEDDING_WEIGHTS = layer_kinds.EMBEDDING


def _own_variables(layer):
    # Only the layer's own variables: a layer with sublayers lists theirs too.
    return layer._trainable_variables + layer._non_trainable_variables


def layer_prunable_weights(layer, include_embeddings=False):
    """The variables of `layer` itself that are pruned (may be empty)."""
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    table = dict(PRUNABLE_WEIGHTS)
    if include_embeddings:
        table.update(EMBEDDING_WEIGHTS)
    for cls, names in table.items():
        if isinstance(layer, cls):
            return [
                v
                for v in _own_variables(layer)
                if v.name in names and len(v.shape) >= 2
            ]
    return []


def _matches(layer, pattern):
    if isinstance(pattern, type):
        return isinstance(layer, pattern)
    return re.fullmatch(pattern, layer.name) is not None


def check_patterns(argument, patterns, layers):
    """Raises unless every pattern (name, regex or class) matches a layer."""
    for pattern in patterns:
        if not any(_matches(layer, pattern) for layer in layers):
            names = sorted(layer.name for layer in layers)
            raise ValueError(
                f"`{argument}` entry {pattern!r} matches no layer of the model. "
                f"Its layers are: {names}"
            )


def prunable_layer_variables(model, include_embeddings=False, exclude=None):
    """`(layer, variable)` for each trainable variable of `model` trained
    sparse, in the order of `model.trainable_variables`, each variable once
    even when its layer is shared.

    Args:
        model: a built `keras.Model`.
        include_embeddings: whether `Embedding` tables are pruned too.
        exclude: layer names, regular expressions matched against whole layer
            names, or layer classes, whose weights stay dense.
    """
    exclude = arguments.layer_patterns("exclude", exclude)
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    check_patterns("exclude", exclude, layers)
    owner = {}
    for layer in layers:
        if any(_matches(layer, pattern) for pattern in exclude):
            continue
        for variable in layer_prunable_weights(layer, include_embeddings):
            owner.setdefault(id(variable), layer)
    return [(owner[id(v)], v) for v in model.trainable_variables if id(v) in owner]


def unbuilt_prunable_layers(model):
    """Names of the layers of `model` that would have prunable kernels but
    are not built yet (a subclassed model built without being called)."""
    kinds = tuple(PRUNABLE_WEIGHTS)
    return [
        layer.name
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if not layer.built and (isinstance(layer, kinds) or hasattr(layer, "get_prunable_weights"))
    ]


def prunable_variables(model, include_embeddings=False, exclude=None):
    """The trainable variables of `model` that are trained sparse (see
    `prunable_layer_variables`)."""
    return [v for _, v in prunable_layer_variables(model, include_embeddings, exclude)]


def layer_sparsity(layer, sparsity_map):
    """The sparsity the first matching entry of `sparsity_map` gives `layer`
    (None if none matches)."""
    for pattern, sparsity in sparsity_map.items():
        if _matches(layer, pattern):
            return sparsity
    return None
