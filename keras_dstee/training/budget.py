"""The budget as the optimizer takes it: densities per trainable variable,
checked once, by position (paths change when a model is loaded, positions
don't), and the densities a pruning method starts from."""

import numbers


def checked_densities(name, densities):
    """`densities` as given (dict or list), each value checked."""
    if isinstance(densities, dict):
        densities = {str(k): v for k, v in densities.items()}
        named = densities.items()
    elif isinstance(densities, (list, tuple)):
        densities = list(densities)
        named = enumerate(densities)
    else:
        raise ValueError(
            f"`{name}` must be a dict {{variable.path: density}} (as "
            "`keras_dstee.layer_densities` returns) or a list with one "
            f"density (or None) per trainable variable. Received: {densities!r}"
        )
    for key, density in named:
        valid = density is None or (
            isinstance(density, numbers.Real) and not isinstance(density, bool) and 0 < density <= 1
        )
        if not valid:
            raise ValueError(
                f"The density of {key!r} in `{name}` must be a number "
                f"in (0, 1], or None. Received: {density!r}"
            )
    return densities


def by_position(name, densities, var_list):
    """One density per trainable variable, None for those outside the budget.
    Saved in this form: variable paths can change when a model is loaded,
    positions don't."""
    if isinstance(densities, list):
        if len(densities) != len(var_list):
            raise ValueError(
                f"`{name}` has {len(densities)} entries but the model trains "
                f"{len(var_list)} variables."
            )
        # Files from 0.1 list 1.0 for every variable outside the budget;
        # biases and other 1-D weights are never part of it.
        return [
            None if d is None or (d == 1 and len(v.shape) < 2) else float(d)
            for v, d in zip(var_list, densities)
        ]
    paths = [v.path for v in var_list]
    unknown = sorted(set(densities) - set(paths))
    if unknown:
        raise ValueError(
            f"`{name}` names variables the model does not train: {unknown}. "
            f"Trainable variables: {sorted(paths)}"
        )
    return [None if densities.get(p) is None else float(densities[p]) for p in paths]


def initial_by_position(initial_densities, initial_sparsity, final, var_list):
    """Densities when training starts: `initial_densities` (by position),
    or `1 - initial_sparsity` of a pruning method (never below the final
    density), or the final ones (`final`, by position)."""
    if initial_densities is not None:
        return by_position("initial_densities", initial_densities, var_list)
    if initial_sparsity is None:
        return list(final)
    return [None if d is None else max(d, 1.0 - initial_sparsity) for d in final]


def clamped(var_list, initial, final):
    """Paths whose given initial density is below the final one."""
    return [
        v.path for v, start, end in zip(var_list, initial, final) if start is not None and end is not None and start < end
    ]
