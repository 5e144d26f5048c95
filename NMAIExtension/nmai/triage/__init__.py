"""NMAITriage engine: raw-data (sinogram) checks per frame and a folder watcher.

    from nmai.triage import watch_folder, watch_frames, RawTriage
    for line in watch_folder("incoming/", timeout_s=60):     # one dict per frame file, as it lands
        print(line["frame"], line["alarm"], line["findings"])

:mod:`nmai.triage.raw` holds the checks, :mod:`nmai.triage.frames` the frame file format, the writer that
splits a simulated acquisition into frame files and the watcher. Artifact cases for evaluation are in
:mod:`nmai.sim.artifacts`.
"""

from .frames import read_header, write_frames, watch_folder  # noqa: F401
from .raw import RawTriage, acquisition_frames, watch_frames  # noqa: F401
