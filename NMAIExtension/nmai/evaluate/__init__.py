"""Evaluations run by ``nmai evaluate TASK``: measured against exact ground truth on simulated phantoms.

* :mod:`.attenuation` — the PET error each MR -> μ-map method causes, per tissue, on whole-body phantoms
  from seeds the training never used; bone Dice, μ MAE, joint histogram / Bland–Altman figure; and the
  comparison of a μ-map with a CT's (used by ``nmai attenuation --compare-ct`` and the Slicer module).

Importing this package imports nothing heavy.
"""
