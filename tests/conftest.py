import os

import jax

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# XLA:CPU compiles threefry's unrolled hash slowly (seconds per random op under jit, and every
# eager random op is compiled too); the "rbg" generator compiles ~8x faster here. Tests only need
# determinism on one backend, which rbg gives. Library code never sets this: it is the user's call.
jax.config.update("jax_default_prng_impl", "rbg")
