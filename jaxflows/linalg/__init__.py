"""Linear algebra for flows: matrix exponentials without determinants or inverses."""

from jaxflows.linalg.adaptive import expm_adaptive, inf_norm, phi_adaptive
from jaxflows.linalg.expm import expm, expm_multiply, low_rank_expm_multiply, phi_multiply, series_terms

__all__ = [
    "expm",
    "expm_adaptive",
    "expm_multiply",
    "inf_norm",
    "low_rank_expm_multiply",
    "phi_adaptive",
    "phi_multiply",
    "series_terms",
]
