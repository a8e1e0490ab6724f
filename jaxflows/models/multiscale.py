"""The multi-scale architecture (RealNVP Sec 3.6, Glow Fig. 2) as one bijection of the image.

Level i maps its input to t_i (squeeze, K steps, split); the first half of t_i's channels goes on
to level i+1 and the whitened second half ε_i is factored out. The latent has the image's shape:
z = unsqueeze(concat(… unsqueeze(concat(t_L, ε_{L−1})) …, ε_1)), so every level's factored
variables sit where RealNVP puts them and `inverse` reads them back exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from jaxflows.bijectors.split import Split
from jaxflows.bijectors.squeeze import squeeze2d, unsqueeze2d
from jaxflows.core.bijector import Array, Bijector, hashable_sequences


class MultiScaleFlow(Bijector):
    """The multi-scale layout (RealNVP Sec 3.6, Glow Fig. 2): levels run from fine to coarse.

    Forward: h₀ = x; level i maps h_{i−1} to t_i; (h_i, ε_i) = the first and second halves of
    t_i's channels for every level but the last; z = unsqueeze(concat(… unsqueeze(concat(t_L,
    ε_{L−1})) …, ε_1)), a latent of x's shape; log_det = Σ_i the levels' log-dets.
    Inverse: read t_L and the ε_i back out of z by squeezing, then run each level's inverse from
    the last to the first; log_det = Σ_i the levels' inverse log-dets. Every level receives the
    same context.
    Each level's forward must map (b, h, w, c) to (b, h/2, w/2, 4c) (it starts with a squeeze),
    and every level but the last must end with a `Split`.

    Attributes:
      levels: the level bijectors, first (finest) to last (stored as a tuple, so the flow hashes).
      names: the levels' variable scopes; None: "level1", "level2", ….
    """

    levels: Sequence[Bijector]
    names: Sequence[str] | None = None

    def __post_init__(self) -> None:
        hashable_sequences(self, "levels", "names")
        super().__post_init__()

    def setup(self):
        names = self.names or [f"level{i + 1}" for i in range(len(self.levels))]
        self.level_modules = tuple(
            b.clone(parent=self, name=n) for b, n in zip(self.levels, names, strict=True)
        )

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        total = jnp.zeros(x.shape[0], x.dtype)
        factored = []
        h = x
        for i, level in enumerate(self.level_modules):
            h, log_det = level.forward(h, context)
            total = total + log_det
            if i < len(self.level_modules) - 1:
                cut = Split.num_kept(h.shape[-1])
                h, eps = h[..., :cut], h[..., cut:]
                factored.append(eps)
        z = unsqueeze2d(h)
        for eps in reversed(factored):
            z = unsqueeze2d(jnp.concatenate([z, eps], axis=-1))
        return z, total

    def inverse(self, z: Array, context: Array | None = None) -> tuple[Array, Array]:
        factored = []
        rest = z
        for _ in self.level_modules[:-1]:
            t = squeeze2d(rest)
            cut = Split.num_kept(t.shape[-1])
            rest, eps = t[..., :cut], t[..., cut:]
            factored.append(eps)
        h = squeeze2d(rest)
        total = jnp.zeros(z.shape[0], z.dtype)
        for i in reversed(range(len(self.level_modules))):
            if i < len(self.level_modules) - 1:
                h = jnp.concatenate([h, factored[i]], axis=-1)
            h, log_det = self.level_modules[i].inverse(h, context)
            total = total + log_det
        return h, total
