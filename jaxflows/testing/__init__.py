"""Property checks for bijectors (yours and the library's): `check_bijector(make, shape)`, or the
single checks in `PROPERTIES` applied to a `BijectorCase`."""

from jaxflows.testing.assertions import PropertyCheckError, assert_close
from jaxflows.testing.autoregressive import check_autoregressive
from jaxflows.testing.properties import (
    PROPERTIES,
    BijectorCase,
    case_context,
    check_bijector,
    check_float64_inputs_with_float32_params,
    check_gradients_finite,
    check_jit_matches_eager,
    check_log_det_antisymmetric,
    check_log_det_matches_jacobian,
    check_round_trip,
    perturb_params,
    sample_input,
    setup_case,
)

__all__ = [
    "PROPERTIES",
    "BijectorCase",
    "PropertyCheckError",
    "assert_close",
    "case_context",
    "check_autoregressive",
    "check_bijector",
    "check_float64_inputs_with_float32_params",
    "check_gradients_finite",
    "check_jit_matches_eager",
    "check_log_det_antisymmetric",
    "check_log_det_matches_jacobian",
    "check_round_trip",
    "perturb_params",
    "sample_input",
    "setup_case",
]
