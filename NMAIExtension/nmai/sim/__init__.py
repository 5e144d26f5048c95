"""PET/MR simulator: procedural phantoms, a clinical ring-scanner model, Poisson acquisitions, OSEM.

Public API::

    from nmai.sim import make_phantom, simulate, write_simulation, reconstruct_folder

    ph = make_phantom("wholebody", seed=3)                 # Phantom: .volumes (activity Bq/ml, mumap cm-1,
                                                            #   ct HU, labels, mr_*), .label_table, .info
    sim = simulate(ph, seed=3, count_fraction=0.25)        # Simulation: .acquisition, .recon, .summary
    write_simulation(sim, "out/")                          # NIfTI + sidecars, acquisition.npz/json, simulation.json
    reconstruct_folder("out/", "out/recon_dixon.nii.gz", mumap_path="dixon_mu.nii.gz")

Lower level: :class:`Scanner` (geometry, normalisation, count levels), :func:`simulate_acquisition`,
:class:`Acquisition` (save/load), :func:`reconstruct` (OSEM → Volume), :func:`system_matrix`.
"""

from .acquisition import Acquisition, simulate_acquisition, thinned  # noqa: F401
from .phantoms import DEFAULT_DURATION_S, DEFAULT_VOXEL_MM, PHANTOMS, Phantom, make_phantom  # noqa: F401
from .projector import Grid2D, system_matrix  # noqa: F401
from .recon import DEFAULT_ITERATIONS, DEFAULT_SUBSETS, reconstruct  # noqa: F401
from .scanner import DEFAULT_SCANNER, Scanner  # noqa: F401
from .simulate import Simulation, reconstruct_folder, simulate, write_phantom, write_simulation  # noqa: F401
