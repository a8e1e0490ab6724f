import os
import shutil
import tempfile

import jax
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# The tests compile thousands of small programs and run each for microseconds, so compile time is
# almost all of the suite's time. Four XLA:CPU settings cut it without changing the arithmetic (no
# fast-math either way): no LLVM optimisation (vectorisation, unrolling); the elemental fusion
# emitter instead of the MLIR fusion emitters, whose per-fusion pass pipelines took about a quarter
# of a compile (a small Glow's gradient compiles in 0.8 s instead of 2.5 s); one LLVM module per
# program instead of 32 parts compiled on a thread pool (the xdist workers already fill the cores:
# the split cost 14-17% more CPU on test_glow_layers.py and test_matrix_exp.py); and the default
# instruction scheduler. Set before JAX starts its backend. JAXFLOWS_TEST_XLA_DEFAULTS=1 runs the
# suite with XLA's defaults instead, and tests/test_compile_settings.py checks that both give the
# same numbers.
_TEST_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
    "--xla_cpu_parallel_codegen_split_count=1 --xla_cpu_enable_concurrency_optimized_scheduler=false"
)
_flags = os.environ.get("XLA_FLAGS", "")
if os.environ.get("JAXFLOWS_TEST_XLA_DEFAULTS") != "1" and _TEST_XLA_FLAGS not in _flags:  # workers inherit
    os.environ["XLA_FLAGS"] = f"{_flags} {_TEST_XLA_FLAGS}".strip()

# XLA:CPU compiles threefry's unrolled hash slowly (seconds per random op under jit, and every
# eager random op is compiled too); the "rbg" generator compiles ~8x faster here. Tests only need
# determinism on one backend, which rbg gives. Library code never sets this: it is the user's call.
jax.config.update("jax_default_prng_impl", "rbg")

# Many tests compile the same small programs (the same models built afresh, in both xdist workers,
# and thousands of eager operations, each a program per shape, compiled again after every
# module's `jax.clear_caches()` below). A compilation cache shared by this session's workers
# compiles each once, however small (reading one back is cheaper than compiling it: 4-8% less
# CPU on three eager-heavy modules). It lives for the session only, so every run, like CI's,
# starts empty.
_OWN_CACHE = "JAXFLOWS_TEST_COMPILATION_CACHE" not in os.environ  # the controller makes it, workers inherit
if _OWN_CACHE:
    os.environ["JAXFLOWS_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="jaxflows-test-cache-")
jax.config.update("jax_compilation_cache_dir", os.environ["JAXFLOWS_TEST_COMPILATION_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAXFLOWS_TEST_COMPILATION_CACHE"], ignore_errors=True)


# Every compiled XLA:CPU program keeps its code in memory mappings of its own, and a worker that
# runs the whole suite compiles thousands: past the kernel's vm.max_map_count (65530 by default)
# XLA aborts or segfaults inside a compilation. Dropping each module's compiled programs when the
# module is done keeps a worker far below that (the session's compilation cache still serves
# programs another module compiles again).
@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    yield
    jax.clear_caches()
