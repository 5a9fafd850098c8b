"""Checks of public arguments, run at construction time.

Each raises a `ValueError` that names the argument, says what it takes and
shows what it received, so a typo fails before `fit` touches the model.
"""

import numbers
import os


def _fail(name, what, value):
    raise ValueError(f"`{name}` must be {what}. Received: {name}={value!r}")


def number(name, value, low, high, low_open=False, high_open=False):
    """A real number in the interval; returned as a float."""
    valid = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if valid:
        valid = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high
        )
    if not valid:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        _fail(name, f"a number in {interval}", value)
    return float(value)


def integer(name, value, minimum, what=""):
    """An integer >= `minimum`; returned as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        _fail(name, f"an integer >= {minimum}{what}", value)
    return int(value)


def optional_integer(name, value, minimum, what=""):
    return None if value is None else integer(name, value, minimum, what)


def boolean(name, value):
    if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
        _fail(name, "True or False", value)
    return bool(value)


def choice(name, value, options):
    """One of `options` (strings)."""
    if not isinstance(value, str) or value not in options:
        _fail(name, f"one of {options}", value)
    return value


def seed(value):
    """An int seed or None (random)."""
    if value is None:
        return None
    return integer("seed", value, 0, " or None")


def layer_patterns(name, value, allow_classes=True):
    """One layer name, regular expression or layer class, or a list of them;
    always returned as a list (a lone string is one pattern, not letters)."""
    if value is None:
        return []
    kinds = (str, type) if allow_classes else (str,)
    patterns = [value] if isinstance(value, kinds) else value
    if not isinstance(patterns, (list, tuple, set, frozenset)) or not all(
        isinstance(p, kinds) for p in patterns
    ):
        what = "layer names, regular expressions" + (" or layer classes" if allow_classes else "")
        _fail(name, f"one of {what}, or a list of them", value)
    return list(patterns)


def sparsity_map(value):
    """A `{layer name or regex: sparsity in [0, 1)}` dict, checked."""
    for pattern, sparsity in value.items():
        if not isinstance(pattern, str):
            _fail("distribution", "keyed by layer names or regular expressions", pattern)
        number(f"distribution[{pattern!r}]", sparsity, 0, 1, high_open=True)
    return dict(value)


def keras_model(value, function):
    """Refuses anything but a `keras.Model` given to `function`, saying what
    to pass instead (a path: load it first)."""
    import keras

    if not isinstance(value, keras.Model):
        hint = " Load the file first: `keras.saving.load_model(path)`." if isinstance(value, (str, os.PathLike)) else ""
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(
            f"`{function}` takes a Keras model (`keras.Model`). Received: {type(value).__name__} {shown}.{hint}"
        )
