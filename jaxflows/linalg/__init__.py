"""Linear algebra for flows: the matrix exponential of the MEF layers, without determinants or
inverses (`expm_adaptive`, and φ for low-rank exponentials, `phi_adaptive`)."""

from jaxflows.linalg.adaptive import default_tolerance, expm_adaptive, inf_norm, phi_adaptive

__all__ = ["default_tolerance", "expm_adaptive", "inf_norm", "phi_adaptive"]
