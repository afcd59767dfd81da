"""Copies of tensors into fresh memory whose pages are mapped in one system call.

Before: a tensor (a parameter or buffer of the user's model).
After:  ``copy_tensor_data(t)``: a new tensor with the same values (bit for bit), shape, strides
        and dtype, in memory of its own (no storage shared with ``t``).

Why: cloning a model's weights is mostly page faults, not copying. A fresh allocation of many
megabytes is mapped lazily, one 4 KiB page per fault as the copy first writes it (ResNet-50's
98 MB: ~25 000 faults, most of the clone's CPU time, counted as system time). Linux ≥ 5.14 maps
a whole range at once with ``madvise(MADV_POPULATE_WRITE)``: the same pages are zeroed and
mapped, without a trap per page (in fresh processes: about a quarter less CPU for the clone).
The advice only maps pages of the tensor's own allocation (the page-aligned range inside it)
and never changes their contents.

Not used, measured: transparent huge pages (``MADV_HUGEPAGE`` on the 2 MiB-aligned range). On
the benchmark machine (a VM) the clone then took 25-35 ms or 250-500 ms for the same 98 MB,
run to run (no compaction stalls: the host maps the guest's fresh huge pages lazily), against a
steady ~60 ms with 4 KiB pages mapped in one call.

Where ``madvise`` or ``MADV_POPULATE_WRITE`` is unavailable (another OS, a kernel before 5.14,
no libc found), or fails, the copy is an ordinary ``clone()``: the same values, demand-faulted
pages. Nothing else changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_MADV_POPULATE_WRITE = 23  # linux/mman.h, Linux >= 5.14
_PAGE = 4096
# Below this a tensor's pages are few and its allocation may come from malloc's heap, whose
# pages are mostly mapped already: one system call would cost more than it saves.
MIN_BYTES = 256 * 1024

enabled = True  # False: plain clone() (tests compare the two bit for bit)


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def _populate(tensor: torch.Tensor) -> None:
    """Map the pages inside ``tensor``'s memory now (a hint: failures are ignored, and an
    unsupported kernel turns the hint off for the rest of the process)."""
    global _madvise
    start = tensor.data_ptr()
    first = -(-start // _PAGE) * _PAGE
    last = (start + tensor.nbytes) // _PAGE * _PAGE
    if last > first and _madvise(first, last - first, _MADV_POPULATE_WRITE) != 0:
        if ctypes.get_errno() == 22:  # EINVAL: a kernel without MADV_POPULATE_WRITE
            _madvise = None


def copy_tensor_data(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.detach().clone()`` (same layout), with the pages of a large CPU tensor mapped in
    one call before the copy writes them. ``requires_grad`` is False; the caller sets it."""
    source = tensor.detach()
    if (not enabled or _madvise is None or source.device.type != "cpu" or source.nbytes < MIN_BYTES
            or not source.is_contiguous() or source.is_quantized or source.is_complex()
            or source.layout != torch.strided):
        return source.clone(memory_format=torch.preserve_format)
    copy = torch.empty_like(source, memory_format=torch.contiguous_format)
    _populate(copy)
    return copy.copy_(source)
