"""Masked autoregressive flows: MAF (Papamakarios et al. 2017) and, under `jaxflows.core.Invert`,
IAF (Kingma et al. 2016).

Each entry x_i is mapped by an element-wise transformer T whose parameters come from the entries
before it in an order (a conditioner such as `MADE`, whose output at i sees only inputs of smaller
degree):

    forward (data → latent):  z_i = T(x_i; h_i(x_{<i})),      log_det = Σ_i log|∂T/∂x_i|
    inverse (latent → data):  x_i = T⁻¹(z_i; h_i(x_{<i})),    log_det = −Σ_i log|∂T/∂x_i|

With the default exp-law affine transformer this is MAF's map z_i = (x_i − μ_i)·exp(−α_i),
log_det = −Σ α_i. The forward is one conditioner pass (every x_{<i} is known). The inverse needs
x_{<i} before x_i: it runs one pass per distinct degree, in a `lax.fori_loop`, starting from zeros;
pass t sets the entries of the t-th smallest degree, whose parameters read only entries set by
earlier passes, so after the last pass every entry is exact. IAF = `Invert(MaskedAutoregressive())`:
its inverse (sampling) is one pass, its forward (density) one pass per degree.

The conditioner is a Flax module with

    outputs_per_entry              a field the layer sets to the transformer's values per entry k
    __call__(x, context=None)      h of shape (*x.shape, k): h[:, i] depends on units of smaller degree
    degrees(x)                     (U,) integer degrees of the U = x.shape[1] units (coordinates of
                                   (batch, d) vectors, tokens of (batch, N, C) inputs)
    distinct_degrees(shape)        the sorted distinct degrees as a NumPy array (static)

and optionally the incremental protocol, which lets a conditioner keep work between the inverse's
passes (a transformer's key/value cache):

    init_cache(x, context=None) -> cache          x: zeros shaped as the input; cache: any pytree
    step(x, cache, index, context=None) -> (h, cache)
        x holds the exact entries of every degree rank < index (zeros elsewhere); h must be right
        for the entries of rank `index` (the others are ignored), and cache is carried to the
        next pass. Without these methods each pass calls the conditioner on the whole input.

The conditioner's variables are created before any loop (at init, by a full call), and the loop
applies it as a pure function of them, so any conditioner works inside it.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflows.bijectors.elementwise import ElementwiseBijector
from jaxflows.bijectors.made import MADE
from jaxflows.bijectors.transformers import AffineTransformer, Transformer
from jaxflows.core.bijector import Array, Bijector, sum_except_batch
from jaxflows.core.errors import InputDtypeError, InvalidArgumentError, ShapeError
from jaxflows.ops import NetworkPolicy, bijection_dtype, network_policy, network_scope

INCREMENTAL_METHODS = ("init_cache", "step")


def check_autoregressive_input(x: Array, owner: str) -> None:
    """Require a floating batch of vectors (batch, d) or tokens (batch, N, C)."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) not in (2, 3) or 0 in shape[1:]:
        raise ShapeError(f"{owner}: expected vectors (batch, d) or tokens (batch, N, C), got shape {shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InputDtypeError(f"{owner}: expected a floating input, got {x.dtype}")


def check_entrywise(transformer: Transformer, owner: str) -> None:
    """Refuse a transformer that does not declare `entrywise = True` (one that mixes entries, such
    as `MatrixExpTransformer`, would break the triangular Jacobian)."""
    if not getattr(transformer, "entrywise", False):
        raise InvalidArgumentError(
            f"{owner}: {type(transformer).__name__} is not an entry-wise transformer (it does not declare "
            "entrywise = True); an autoregressive layer needs T to map each entry alone, e.g. "
            "AffineTransformer, AdditiveTransformer or RationalQuadraticSpline"
        )
    per_entry = transformer.num_params(1)
    if transformer.num_params(3) != 3 * per_entry:
        raise InvalidArgumentError(
            f"{owner}: {type(transformer).__name__}.num_params must be k per entry, got "
            f"num_params(1) = {per_entry} but num_params(3) = {transformer.num_params(3)}"
        )


class MaskedAutoregressive(Bijector, NetworkPolicy):
    """The masked autoregressive layer (MAF, Papamakarios et al. 2017; see the module doc).

    Forward (data → latent, one conditioner pass): z_i = T(x_i; h_i), log_det = Σ log|∂T/∂x_i|.
    Inverse (one pass per distinct degree): x_i = T⁻¹(z_i; h_i), log_det = −Σ log|∂T/∂x_i|,
    h = conditioner(x) in both. Takes (batch, d) vectors or (batch, N, C) tokens (a token's C
    values share a degree and are transformed element-wise from the tokens before it).
    Zero-initialised conditioner outputs make it the identity (exp or jet affine law, additive,
    spline). IAF is `Invert(MaskedAutoregressive(...))`.

    Attributes:
      transformer: the entry-wise law T (`jaxflows.bijectors.transformers`, or
        `RationalQuadraticSpline`), declaring `entrywise = True`; it must not create parameters of
        its own (it runs inside the inverse's loop). Default: MAF's `AffineTransformer("exp")`.
      conditioner: the network (see the module doc for its protocol), e.g. `MADE(hidden=(128,),
        order="reversed")`; None: `MADE()`. Its `outputs_per_entry` and, where it has them,
        `dtype`, `param_dtype` and `precision` are set by this layer (the network policy).
      dtype, param_dtype, network_dtype, network_precision: as `jaxflows.ops.NetworkPolicy`.
    """

    transformer: Transformer = AffineTransformer(scale="exp")
    conditioner: nn.Module | None = None

    def __post_init__(self) -> None:
        check_entrywise(self.transformer, "MaskedAutoregressive")
        if self.conditioner is not None and not isinstance(self.conditioner, nn.Module):
            raise InvalidArgumentError(
                "MaskedAutoregressive: conditioner must be a Flax module such as MADE(), got "
                f"{self.conditioner!r}"
            )
        super().__post_init__()

    def setup(self) -> None:
        base = MADE() if self.conditioner is None else self.conditioner
        fields = {field.name for field in dataclasses.fields(base)}
        policy = network_policy(self)
        updates = {
            "dtype": policy["dtype"],
            "precision": policy["precision"],
            "param_dtype": self.param_dtype,
        }
        updates = {name: value for name, value in updates.items() if name in fields}
        outputs = self.transformer.num_params(1)
        self.network = base.clone(parent=None, outputs_per_entry=outputs, **updates)

    def law(self, h: Array, x: Array) -> ElementwiseBijector:
        """T_h for inputs shaped as x, from h (*x.shape, k)."""
        channels = x.shape[-1]
        grouped = h.reshape(*x.shape[:-1], channels * h.shape[-1])
        return self.transformer(grouped, channels, param_dtype=self.param_dtype)

    def checked(self, h: Array, x: Array) -> Array:
        """The conditioner's output, checked against (*x.shape, k) and cast to the map's dtype."""
        expected = (*x.shape, self.transformer.num_params(1))
        if h.shape != expected:
            raise ShapeError(
                f"MaskedAutoregressive: the conditioner must return h of shape {expected} "
                f"(the transformer needs {expected[-1]} values per entry), got {h.shape}"
            )
        return h.astype(bijection_dtype(self.dtype, x))

    def parameters(self, x: Array, context: Array | None = None) -> Array:
        """h = conditioner(x, c), one pass, under the network policy."""
        with network_scope():
            return self.checked(self.network(x, context), x)

    def entry_degrees(self, x: Array) -> Array:
        """The degree of every entry of one example, shape x.shape[1:] (a token's values share one)."""
        degrees = self.network.degrees(x)
        return jnp.broadcast_to(degrees.reshape(-1, *(1,) * (x.ndim - 2)), x.shape[1:])

    def forward(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_autoregressive_input(x, "MaskedAutoregressive")
        z, terms = self.law(self.parameters(x, context), x).forward_and_log_det(x)
        return z, sum_except_batch(jnp.broadcast_to(terms, x.shape))

    def inverse(self, z: Array, context: Array | None = None) -> tuple[Array, Array]:
        check_autoregressive_input(z, "MaskedAutoregressive")
        if self.is_initializing():
            self.parameters(z, context)  # the conditioner's variables exist before the loop
        distinct = self.network.distinct_degrees(z.shape)
        degrees = self.entry_degrees(z)
        ranks = jnp.sum(degrees[..., None] > jnp.asarray(distinct), axis=-1)  # 0 for the smallest degree
        template, variables = self.network.clone(parent=None), self.network.variables
        incremental = all(callable(getattr(template, name, None)) for name in INCREMENTAL_METHODS)
        dtype = bijection_dtype(self.dtype, z)

        def run(*args, method="__call__"):
            with network_scope():
                return template.apply(variables, *args, method=method)

        def conditioned(x: Array, cache, index: Array):
            if incremental:
                h, cache = run(x, cache, index, context, method="step")
            else:
                h = run(x, context)
            return self.checked(h, z), cache

        def one_pass(index: Array, carry):
            x, terms, cache = carry
            h, cache = conditioned(x, cache, index)
            x_new, terms_new = self.law(h, z).inverse_and_log_det(z)
            now = ranks == index
            terms_new = jnp.broadcast_to(terms_new, z.shape).astype(terms.dtype)
            return jnp.where(now, x_new, x), jnp.where(now, terms_new, terms), cache

        start = jnp.zeros(z.shape, dtype)
        cache = run(start, context, method="init_cache") if incremental else ()
        x, terms, _ = jax.lax.fori_loop(0, len(distinct), one_pass, (start, jnp.zeros(z.shape, dtype), cache))
        return x.astype(z.dtype), sum_except_batch(terms)
