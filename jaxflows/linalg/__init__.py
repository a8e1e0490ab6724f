"""Linear algebra for flows: matrix exponentials without determinants or inverses."""

from jaxflows.linalg.expm import expm, expm_multiply, low_rank_expm_multiply, phi_multiply, series_terms

__all__ = ["expm", "expm_multiply", "low_rank_expm_multiply", "phi_multiply", "series_terms"]
