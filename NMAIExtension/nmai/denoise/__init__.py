"""PET denoising: Gaussian baseline, learned denoisers (cnn, gan), super-resolution (sr) and CNN-prior
reconstruction. See :mod:`nmai.denoise.apply` (images) and :mod:`nmai.denoise.prior` (acquisitions)."""
