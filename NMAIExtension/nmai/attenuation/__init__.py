"""PET attenuation maps (μ at 511 keV, cm⁻¹): from CT, from MR by the Dixon 4-class method, and (later) by U-Net."""

from .dixon import dixon4_classes, dixon4_mumap  # noqa: F401
