"""The autoregressive property: `check_autoregressive(make, shape)` checks that a layer's Jacobian
is triangular in its order, and not diagonal.

    from jaxflows.testing import check_autoregressive
    check_autoregressive(lambda: MaskedAutoregressive(), shape=(2, 5))   # PropertyCheckError on failure

A layer whose output at entry i depends only on x_i and on entries of smaller degree has
∂y_i/∂x_j = 0 unless i = j or m(j) < m(i); entries of equal degree (a token's values) do not see
each other. Zero-initialised conditioners make that Jacobian diagonal, which passes any such test:
the parameters are perturbed first, and the check also requires some allowed off-diagonal entry to
be nonzero (a layer whose masks cut every dependency is not autoregressive either).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflows.core.errors import InvalidArgumentError
from jaxflows.testing.assertions import require

CHECK = "check_autoregressive"


def _to_float64(tree):
    cast = lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a
    return None if tree is None else jax.tree_util.tree_map(cast, tree)


def _perturbed(variables, scale: float, key):
    leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(key, max(len(leaves), 1))
    noisy = [
        leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
        else leaf
        for leaf, k in zip(leaves, keys, strict=False)
    ]
    return {**variables, "params": jax.tree_util.tree_unflatten(treedef, noisy)}


def _degrees_method(module: nn.Module) -> Callable:
    """A method (module, x) -> the entry degrees, from the layer or the layer it inverts (`Invert`)."""
    path: list[str] = []
    current = module
    while not hasattr(current, "entry_degrees"):
        inner = getattr(current, "bijector", None)
        if not isinstance(inner, nn.Module):
            raise InvalidArgumentError(
                f"{CHECK}: {type(module).__name__} has no entry_degrees method (nor a wrapped bijector "
                "with one); pass order=, the degree of each entry"
            )
        path.append("bijector")
        current = inner

    def degrees(bound, x):
        for name in path:
            bound = getattr(bound, name)
        return bound.entry_degrees(x)

    return degrees


def _entry_degrees(order, shape: Sequence[int]) -> np.ndarray:
    """An explicit order (one degree per unit, shape[1], or per entry, shape[1:]) per entry."""
    order = np.asarray(order)
    event = tuple(shape[1:])
    if order.shape == event:
        return order
    if order.shape == event[:1]:
        return np.broadcast_to(order.reshape(-1, *(1,) * (len(event) - 1)), event)
    raise InvalidArgumentError(f"{CHECK}: order must have shape {event[:1]} or {event}, got {order.shape}")


def check_autoregressive(
    make: Callable[[], nn.Module],
    shape: Sequence[int],
    order: Sequence[int] | np.ndarray | None = None,
    *,
    context: Callable | None = None,
    perturb: float = 0.1,
    seed: int = 0,
    atol: float = 1e-12,
    min_dependence: float = 1e-6,
) -> None:
    """Raise `PropertyCheckError` unless the layer `make()` is autoregressive in its order.

    In float64, with every parameter perturbed by N(0, perturb²), the Jacobian J = ∂y/∂x of one
    example (forward, and the inverse at that example's output) must satisfy
    |J_ij| ≤ atol·max(1, max|J|) wherever i ≠ j and m(j) ≥ m(i), and have some entry with
    m(j) < m(i) above `min_dependence`.

    Args:
      make: builds the layer (a `MaskedAutoregressive`, an `Invert` of one, or any layer with an
        `entry_degrees(x)` method).
      shape: the input's shape, batch first: (batch, d) or (batch, N, C).
      order: the degrees, one per unit (shape[1]) or per entry (shape[1:]); None: the layer's own
        (`entry_degrees`, read after init, so a random order drawn at init is the one checked).
      context: (key, batch) -> context, for a conditional layer.
      perturb: std of the noise added to the float parameters after init.
      seed: of the input, init and noise.
      atol: the tolerance of the forbidden entries, relative to the largest |J|.
      min_dependence: the least |J_ij| some allowed off-diagonal entry must reach.
    """
    module = make()
    k_data, k_init, k_noise, k_context = jax.random.split(jax.random.key(seed), 4)
    x = 1.5 * jax.random.normal(k_data, tuple(shape)) + 0.3
    c = None if context is None else context(k_context, shape[0])
    variables = _perturbed(module.init(k_init, x, c), perturb, k_noise)
    if order is None:
        degrees = np.asarray(module.apply(variables, x, method=_degrees_method(module)))
    else:
        degrees = _entry_degrees(order, shape)
    flat = degrees.reshape(-1)
    size = flat.size
    forbidden = (flat[None, :] >= flat[:, None]) & ~np.eye(size, dtype=bool)
    allowed_off_diagonal = flat[None, :] < flat[:, None]
    with jax.enable_x64(True):
        variables64 = _to_float64(variables)
        x1 = jnp.asarray(x[:1], jnp.float64)
        c1 = _to_float64(None if c is None else c[:1])
        for method in ("forward", "inverse"):
            apply = lambda v, m=method: module.apply(variables64, v.reshape(x1.shape), c1, method=m)[0]
            point = x1 if method == "forward" else module.apply(variables64, x1, c1, method="forward")[0]
            jacobian = np.asarray(jax.jit(jax.jacfwd(lambda v, f=apply: f(v).reshape(-1)))(point.reshape(-1)))
            require(jacobian.shape == (size, size), CHECK, f"{method}: the map must keep the input's size")
            scale = max(1.0, float(np.max(np.abs(jacobian))))
            worst = float(np.max(np.abs(jacobian[forbidden]), initial=0.0))
            if worst > atol * scale:
                i, j = np.argwhere(forbidden & (np.abs(jacobian) == worst))[0]
                require(
                    False,
                    CHECK,
                    f"{method}: output {int(i)} (degree {flat[i]}) depends on input {int(j)} (degree "
                    f"{flat[j]}): |∂y_i/∂x_j| = {worst:.3g} > {atol:.3g}·{scale:.3g}; the Jacobian is not "
                    "triangular in the order",
                )
            strongest = float(np.max(np.abs(jacobian[allowed_off_diagonal]), initial=0.0))
            require(
                strongest > min_dependence,
                CHECK,
                f"{method}: no output depends on an input of smaller degree (largest such |∂y_i/∂x_j| = "
                f"{strongest:.3g}): the Jacobian is diagonal (are the parameters zero, or the masks empty?)",
            )
