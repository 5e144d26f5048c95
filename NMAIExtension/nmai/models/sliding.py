"""Sliding-window inference over a (C, Z, Y, X) array in bounded memory, with progress and cancel.

MONAI's ``sliding_window_inference`` does the tiling and Gaussian blending. Around it:

* **Slabs along z.** A large volume is cut into z-slabs, each holding a consecutive run of the *global*
  z-windows (the windows MONAI would use on the whole volume) and overlapping its neighbour by the windows
  that can cover a voxel together; each slab writes only the voxels all of whose windows it holds. So the
  result equals the whole-volume result (same windows, same blending weights, same summation order), and
  the extra work is a few windows per slab boundary.
* **Peak memory** is about ``4 B x N x (C_in + C_out)`` for the whole normalised input and the result
  (N voxels), plus ``4 B x slab voxels x (C_in + 2 C_out + 1)`` for MONAI's slab buffers (input copy,
  blended output, its normalised copy, weight map), plus the network's activations for ``sw_batch_size``
  windows. The slab buffers are held under ``memory_limit_mb`` (default: 2 GiB or a quarter of the free
  memory, whichever is smaller).
* **2.5-D**: a 2-D network sees each slice with ``k`` neighbours on each side as channels (ordered input
  channel first, then slice ``z-k .. z+k``; edge slices repeat the first/last slice). Slices are processed
  in chunks under the same memory limit, and each slice's result does not depend on the chunking.
* **Progress** counts windows (the predictor is wrapped) and checks for cancel before every window batch.
* **Devices**: windows run on ``device`` (GPU when present) and blend on the CPU; on CUDA out-of-memory the
  slab is redone on the CPU and the rest of the volume stays there.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from ..errors import NMAIError
from ..progress import Progress


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window start indices MONAI uses along one axis (``dense_patch_slices``)."""
    if roi >= size:
        return [0]
    interval = max(int(roi * (1 - overlap)), 1)
    starts, i = [], 0
    while i * interval + roi < size:
        starts.append(i * interval)
        i += 1
    return starts + [size - roi]


def plan_slabs(size: int, roi: int, overlap: float, max_windows: int) -> list[tuple[int, int, int, int]]:
    """``(z0, z1, w0, w1)`` per slab: read input ``[z0, z1)``, write output ``[w0, w1)`` (exact tiling)."""
    starts = np.asarray(window_starts(size, roi, overlap))
    n = len(starts)
    if n <= max(max_windows, 1):
        return [(0, size, 0, size)]
    z = np.arange(size)
    lo = np.searchsorted(starts + roi, z, side="right")  # first window covering z
    hi = np.searchsorted(starts, z, side="right") - 1     # last window covering z
    k = int((hi - lo + 1).max())                          # most windows covering one voxel
    per = max(max_windows, k + 1)
    chunks, a = [], 0
    while True:
        b = min(a + per - 1, n - 1)
        chunks.append((a, b))
        if b == n - 1:
            break
        a = b - k + 2  # neighbours share k - 1 windows: every voxel's windows fit in one slab
    owner = np.full(size, -1)
    for j, (a, b) in enumerate(chunks):
        owner[(owner < 0) & (lo >= a) & (hi <= b)] = j
    if (owner < 0).any():  # pragma: no cover - guaranteed by the overlap above
        raise AssertionError("slab plan does not cover the volume")
    slabs = []
    for j, (a, b) in enumerate(chunks):
        written = np.flatnonzero(owner == j)
        if written.size:
            slabs.append((int(starts[a]), int(starts[b] + roi), int(written[0]), int(written[-1] + 1)))
    return slabs


def default_threads() -> int:
    """Threads that fit the machine: physical cores available to this process."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        available = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or available
    except ImportError:  # pragma: no cover
        physical = available
    return max(1, min(available, physical))


@contextlib.contextmanager
def torch_threads(n: int | None):
    import torch

    previous = torch.get_num_threads()
    # never more than the process already allows (``nmai --threads``, torch.set_num_threads)
    torch.set_num_threads(int(n or min(default_threads(), previous)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def fp32_precision(exact: bool = True):
    """Full float32 (IEEE) convolutions and matmuls on the GPU while inside (TF32 off), restored after.

    PyTorch lets cuDNN use TF32 by default: ~1e-3 relative error on Ampere/Hopper, enough to break the
    1e-5 unit-invariance of PET models and GPU/CPU agreement. Quantitative outputs get IEEE float32.
    """
    import torch

    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if not exact or conv is None:  # old torch: the legacy flags
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        if exact:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            if exact:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
        return
    saved = conv, torch.backends.cuda.matmul.fp32_precision
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = saved


def memory_budget_bytes(memory_limit_mb: float | None) -> int:
    if memory_limit_mb is not None:
        return int(memory_limit_mb * 2**20)
    try:
        import psutil

        free = psutil.virtual_memory().available
    except ImportError:  # pragma: no cover
        free = 8 * 2**30
    return int(min(2 * 2**30, free / 4))


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower() \
        or "not enough memory" in str(exc).lower()


class _Executor:
    """Runs slab jobs on the current device; falls back to the CPU once on CUDA out-of-memory."""

    def __init__(self, module, device, progress: Progress, move: bool = True):
        import torch

        self.module, self.device, self.progress = module, torch.device(device), progress
        if move:
            self.module.to(self.device)

    def run(self, job):
        import torch

        try:
            return job(self.device)
        except (RuntimeError, MemoryError) as exc:
            if not _is_oom(exc):
                raise
            if self.device.type == "cpu":
                raise NMAIError("not enough memory for inference; lower memory_limit_mb or sw_batch_size, "
                                "or close other programs") from None
        torch.cuda.empty_cache()
        self.device = torch.device("cpu")
        self.module.to(self.device)
        self.progress.check()
        return job(self.device)


def sliding_predict(module, x: np.ndarray, *, dims: int, context_slices: int, roi_size, out_channels: int,
                    overlap: float = 0.25, sw_batch_size: int = 1, mode: str = "gaussian", device="cpu",
                    activations=(), progress: Progress | None = None, memory_limit_mb: float | None = None,
                    max_windows_per_slab: int | None = None, allow_tf32: bool = False) -> tuple[np.ndarray, str]:
    """Predict ``x`` (C, Z, Y, X float32, already normalised) -> ((C_out, Z, Y, X) float32, device used).

    ``activations``: ``(start, stop, "sigmoid" | "softmax")`` channel ranges applied per window.
    ``max_windows_per_slab`` overrides the memory-derived slab size (tests). ``allow_tf32`` lets the GPU
    use TF32 (faster, ~1e-3 relative error); by default inference is IEEE float32 everywhere.
    """
    import torch
    from monai.inferers import sliding_window_inference

    progress = progress or Progress()
    if mode not in ("gaussian", "constant"):
        raise NMAIError(f"unknown blending mode {mode!r}; use gaussian or constant")
    c_in, nz, ny, nx = x.shape
    roi = [int(r) for r in roi_size]
    if len(roi) != dims:
        raise NMAIError(f"roi_size {roi} must have {dims} values for a {dims}-D network")
    k = int(context_slices)
    c_net = c_in * (2 * k + 1) if dims == 2 else c_in
    budget = memory_budget_bytes(memory_limit_mb)
    per_voxel = 4 * (c_net + 2 * out_channels + 1)
    n_xy = len(window_starts(ny, roi[-2], overlap)) * len(window_starts(nx, roi[-1], overlap))
    if dims == 3:
        interval = max(int(roi[0] * (1 - overlap)), 1)
        fit = (budget // (per_voxel * ny * nx) - roi[0]) // interval + 1
        slabs = plan_slabs(nz, roi[0], overlap, max_windows_per_slab or max(int(fit), 1))
        total = sum(len(window_starts(z1 - z0, roi[0], overlap)) for z0, z1, _, _ in slabs) * n_xy
    else:
        step = max(1, min(nz, budget // (per_voxel * ny * nx)))
        if max_windows_per_slab:
            step = max_windows_per_slab
        slabs = [(z0, min(z0 + step, nz), z0, min(z0 + step, nz)) for z0 in range(0, nz, step)]
        total = nz * n_xy
    done = [0]
    executor = _Executor(module, device, progress)

    def predictor(window):
        progress.check()
        y = module(window)
        if not isinstance(y, torch.Tensor) or y.shape[2:] != window.shape[2:] or y.shape[1] != out_channels:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise NMAIError(f"the network returned {shape} for a window of {tuple(window.shape)}; "
                            f"predict_volume needs a dense network with {out_channels} output channels")
        for start, stop, kind in activations:
            part = y[:, start:stop]
            y[:, start:stop] = torch.sigmoid(part) if kind == "sigmoid" else torch.softmax(part, dim=1)
        done[0] += window.shape[0]
        progress(done[0] / max(total, 1), f"model inference ({done[0]}/{total} windows)")
        return y

    out = np.empty((out_channels, nz, ny, nx), dtype=np.float32)
    offsets = np.arange(-k, k + 1)
    for z0, z1, w0, w1 in slabs:
        if dims == 3:
            slab = torch.from_numpy(np.ascontiguousarray(x[:, z0:z1]))[None]
        else:  # (slices, C*(2k+1), Y, X): input channel outer, neighbour slice inner
            idx = np.clip(np.arange(z0, z1)[:, None] + offsets[None, :], 0, nz - 1)
            stack = x[:, idx].transpose(1, 0, 2, 3, 4).reshape(z1 - z0, c_net, ny, nx)
            slab = torch.from_numpy(np.ascontiguousarray(stack))

        def job(dev, slab=slab):
            count = done[0]
            try:
                with torch.inference_mode(), fp32_precision(not allow_tf32):
                    return sliding_window_inference(slab, roi, sw_batch_size, predictor, overlap=overlap,
                                                    mode=mode, sw_device=dev, device="cpu")
            except BaseException:
                done[0] = count  # a retried slab counts its windows once
                raise

        y = executor.run(job)
        if dims == 3:
            out[:, w0:w1] = y[0, :, w0 - z0:w1 - z0].numpy()
        else:
            out[:, w0:w1] = y.permute(1, 0, 2, 3).numpy()
        del y, slab
    return out, str(executor.device)
