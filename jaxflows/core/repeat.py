"""`Repeat`: one layer applied `length` times with separate parameters, traced and compiled once.

The K flow steps of a Glow level have one structure and K sets of parameters. `Repeat` stores
those parameters stacked along a leading axis of length K (every variable collection) and runs the
steps as one `lax.scan`, so tracing and compilation cost does not grow with K. Step k's variables
are the k-th slice: `Repeat.step_variables(variables, k)`; analysis tools name step k `<path>/k`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.core.backprop import _SCAN_UNROLL, check_gradient_mode, run_scan
from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.errors import InvalidArgumentError
from jaxflows.core.variables import UnusedVariablesError, VariablesMismatchError, flat_shapes


def select(stacked: Any, index: int) -> Any:
    """The `index`-th slice of every leaf of a pytree stacked along axis 0."""
    return jax.tree_util.tree_map(lambda a: a[index], stacked)


class Repeat(Bijector):
    """f_{K−1} ∘ … ∘ f_0: `layer` applied K = `length` times, step k with its own variables.

    Forward: y = f_{K−1}(… f_0(x)), log_det = Σ_k log|det ∂f_k|, one `lax.scan` over the steps.
    Inverse: x = f_0⁻¹(… f_{K−1}⁻¹(y)), the same scan in reverse, log_det = Σ_k of the inverses'.
    Every step receives the same context.
    `init` runs the steps in order on the data (`flax.linen.scan`), so data-dependent
    initialisation (ActNorm) sees each step's real input. With gradient="standard" the same Flax
    scan also runs whenever the call passes rng streams (each step gets its own split, e.g. the
    "log_det" probes of `InvertibleResidual`) or makes a non-parameter collection mutable (each
    step's updated slice is stacked back, e.g. spectral-norm vectors in a training step); the
    "remat" and "invertible" modes apply the steps to their variables as they are, without rngs.

    Attributes:
      layer: the bijector repeated; step k's variables are the k-th slice of the stack.
      length: K ≥ 1, the number of steps.
      gradient: how reverse-mode autodiff treats the steps: "standard", "remat" (`jax.checkpoint`
        per step) or "invertible" (rebuild each step's input with its inverse; constant activation
        memory in K); see `jaxflows.core.backprop`.
    """

    layer: Bijector
    length: int
    gradient: str = "standard"

    def setup(self):
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise InvalidArgumentError(f"Repeat: length must be an integer ≥ 1, got {self.length!r}")
        check_gradient_mode(self.gradient, "Repeat")
        # The step's variables live directly in this module's scope, stacked along axis 0.
        self.step = self.layer.clone(parent=None)
        nn.share_scope(self, self.step)

    def template(self) -> Bijector:
        """The repeated layer, unbound: apply it to `step_variables(...)`."""
        return self.layer.clone(parent=None)

    @staticmethod
    def step_variables(variables: Any, index: int) -> Any:
        """Variables of step `index` from this module's (stacked) variables."""
        return select(variables, index)

    def _lifted_scan(self, x: Array, context: Array | None, inverse: bool) -> tuple[Array, Array]:
        def body(module, carry, c):
            h, total = carry
            h, log_det = module.step.inverse(h, c) if inverse else module.step.forward(h, c)
            return (h, total + log_det), None

        scan = nn.scan(
            body,
            variable_axes={True: 0},
            split_rngs={True: True},
            in_axes=nn.broadcast,
            length=self.length,
            reverse=inverse,
            unroll=_SCAN_UNROLL.get(),  # `scan_unroll`, as run_scan
        )
        (y, total), _ = scan(self, (x, jnp.zeros(x.shape[0], x.dtype)), context)
        return y, total

    def _check_depth(self, variables: Any) -> None:
        """Every variable must be stacked `length` deep: a longer stack would run extra steps."""
        for path, shape in flat_shapes(variables).items():
            depth = shape[0] if shape else None
            if depth == self.length:
                continue
            where = "/".join(self.scope.path) or "the top level"
            found = f"Repeat of length {self.length} at {where}: its variables are stacked {depth} deep"
            name = f"{'/'.join(path)} has shape {shape}"
            if depth is not None and depth > self.length:
                raise UnusedVariablesError(
                    f"{found} ({name}); steps {self.length}…{depth - 1} would never run: "
                    "variables from a deeper model?"
                )
            raise VariablesMismatchError(
                f"{found} ({name}), expected a leading axis of {self.length}: "
                "variables from a shallower model?"
            )

    def _needs_lifted_scan(self) -> bool:
        """Flax's own scan carries rng streams (other than "params") and mutable non-parameter
        collections (e.g. spectral-norm vectors in a training step) through the steps."""
        if self.is_initializing():
            return True
        if self.gradient != "standard":
            return False
        rngs = any(name != "params" for name in self.scope.rngs)
        return rngs or any(c != "params" and self.is_mutable_collection(c) for c in self.variables)

    def _run(self, x: Array, context: Array | None, inverse: bool) -> tuple[Array, Array]:
        if self._needs_lifted_scan():
            return self._lifted_scan(x, context, inverse)
        variables = dict(self.variables)
        self._check_depth(variables)
        template = self.template()

        def step(variables, h, c, step_inverse):
            return template.apply(variables, h, c, method="inverse" if step_inverse else "forward")

        return run_scan(step, variables, x, context, inverse, self.gradient)

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._run(x, context, inverse=False)

    def inverse(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._run(y, context, inverse=True)

    def unrolled_steps(self) -> list[tuple[str, Bijector, Any]]:
        """(name, unbound layer, variables) of every step in forward order: the analysis view."""
        variables = dict(self.variables)
        return [(str(k), self.template(), self.step_variables(variables, k)) for k in range(self.length)]
