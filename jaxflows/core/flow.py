"""A flow: a bijector from data to latent joined with a base distribution on the latent."""

from __future__ import annotations

import math

import flax.linen as nn

from jaxflows.core.bijector import Array, Bijector
from jaxflows.core.objective import check_pixels, dequantize, discrete_log_prob_offset
from jaxflows.core.validation import check_count, check_finite, check_image, check_nonempty, check_range
from jaxflows.core.variables import check_variables


class Flow(Bijector):
    """A normalising flow: log p(x) = log p_base(f(x)) + log|det df/dx|; samples are f⁻¹(z), z ~ base.

    Forward: z = f(x) with f's log-det (data → latent). Inverse: x = f⁻¹(z) with f⁻¹'s log-det.
    The flow is itself a bijector (its forward is the bijector's), so every tool that takes a
    bijector takes a flow. `apply` first checks that the variables fit this flow
    (`jaxflows.core.check_variables`): variables from another model raise `UnusedVariablesError`
    or `VariablesMismatchError` instead of running silently.

    Attributes:
      bijector: f, from data to latent.
      base: the latent distribution (`log_prob`, `sample`), e.g. `StandardNormal()`.
      event_shape: (height, width, channels) of one example.
      data_range: the documented domain of `log_prob`'s input (dequantised pixels lie in [0, 1));
        concrete inputs outside it are rejected, None turns the check off.
      dequantizer: q(u | x), called as dequantizer(key, pixels, bins) -> (u, log q), for
        `discrete_log_prob`; None: uniform dequantisation.
    """

    bijector: Bijector
    base: nn.Module
    event_shape: tuple[int, ...]
    data_range: tuple[float, float] | None = (0.0, 1.0)
    dequantizer: nn.Module | None = None

    @nn.nowrap
    def apply(self, variables, *args, **kwargs):
        """`flax.linen.Module.apply`, after checking the variables' paths and shapes against the
        ones `init` creates (at trace time under `jit`; the reference is computed once per flow)."""
        check_variables(self, variables)
        return super().apply(variables, *args, **kwargs)

    def _check(self, x: Array) -> None:
        check_image(x)
        check_nonempty(x)
        check_finite(x)
        if tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ValueError(
                f"expected examples of shape {tuple(self.event_shape)} (H, W, C), got {tuple(x.shape[1:])}"
            )

    def forward(self, x: Array) -> tuple[Array, Array]:
        self._check(x)
        return self.bijector.forward(x)

    def inverse(self, z: Array) -> tuple[Array, Array]:
        self._check(z)
        return self.bijector.inverse(z)

    def log_prob(self, x: Array) -> Array:
        if self.data_range is not None:
            check_range(x, *self.data_range)
        z, log_det = self.forward(x)
        return self.base.log_prob(z) + log_det

    def discrete_log_prob(self, pixels: Array, key: Array, bins: int) -> Array:
        """One draw of the lower bound on log P(pixels) (nats) for integer pixels in {0, …, bins−1}:
        log p((x + u)/K) − D log K − log q(u | x), u from `dequantizer` (uniform when None, log q = 0).
        """
        check_nonempty(pixels, "pixels")
        if self.dequantizer is None:
            x, log_q = dequantize(key, pixels, bins), 0.0
        else:
            check_pixels(pixels, bins)
            u, log_q = self.dequantizer(key, pixels, bins)
            x = (pixels.astype(u.dtype) + u) / bins
        offset = discrete_log_prob_offset(math.prod(self.event_shape), bins)
        return self.log_prob(x) + offset - log_q

    def sample(self, key: Array, num_samples: int, temperature: float = 1.0) -> Array:
        """`num_samples` draws with the base standard deviation scaled by `temperature`."""
        num_samples = check_count(num_samples, "num_samples", "Flow.sample")
        z = self.base.sample(key, (num_samples, *self.event_shape), temperature)
        return self.inverse(z)[0]

    def sample_and_log_prob(
        self, key: Array, num_samples: int, temperature: float = 1.0
    ) -> tuple[Array, Array]:
        """`sample` and the log-density of each draw under the flow."""
        num_samples = check_count(num_samples, "num_samples", "Flow.sample_and_log_prob")
        z = self.base.sample(key, (num_samples, *self.event_shape), temperature)
        x, log_det = self.inverse(z)
        return x, self.base.log_prob(z) - log_det

    def __call__(self, x: Array) -> Array:
        return self.log_prob(x)
