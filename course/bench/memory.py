"""Peak memory of a call, on a GPU or the CPU: `peak_memory` is the course's one tracker.

On the CPU there is no allocator counter to read, so `LiveStorage` watches every op's outputs
and adds up the tensor storage that is alive at once.
"""

import weakref

import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode


class LiveStorage(TorchDispatchMode):
    """Tracks the bytes of tensor storage allocated by the ops it sees and still alive.

    Every op's outputs pass through `__torch_dispatch__`. An output whose storage is not one of
    the op's inputs' storages is a new allocation: its bytes are added, and a finalizer on each
    tensor viewing it takes them off when the last one dies (PyTorch keeps a tensor's Python
    object alive as long as the tensor itself, so this is when the memory is freed).
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0  # bytes of the largest single storage allocated
        self.largest_shape = None  # the shape of the tensor that allocated it
        self._views = {}  # storage key -> [bytes, number of live tensors using it]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {_storage_key(t) for t in _tensors((args, kwargs))}
        for tensor in _tensors(out):
            key = _storage_key(tensor)
            if key is None or (key in seen and key not in self._views):
                continue  # a view of (or in-place on) memory allocated before measuring began
            if key not in self._views:
                size = tensor.untyped_storage().nbytes()
                self._views[key] = [size, 0]
                self.live += size
                if size > self.largest:
                    self.largest, self.largest_shape = size, tuple(tensor.shape)
                self.peak = max(self.peak, self.live)
            self._views[key][1] += 1
            weakref.finalize(tensor, self._release, key)
        return out

    def _release(self, key):
        entry = self._views.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._views[key]


def _tensors(tree) -> list:
    return [x for x in pytree.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _storage_key(tensor: torch.Tensor):
    """Identifies the memory a tensor lives in (None when it has none)."""
    if tensor.device.type == "meta" or tensor.untyped_storage().nbytes() == 0:
        return None
    return (tensor.device.type, tensor.device.index, tensor.untyped_storage().data_ptr())


def peak_memory(fn, *args, **kwargs) -> int:
    """Peak bytes of memory allocated while `fn(*args, **kwargs)` runs, above what was allocated
    before it started (its result counts: it is allocated during the call).

    On CUDA (the first tensor argument's device): `torch.cuda.max_memory_allocated`. On the CPU:
    the tensor storage that the call allocates and that is alive at the same time, tracked op by
    op with a TorchDispatchMode. Memory that a kernel uses only inside itself (a scratch buffer it
    frees before returning) is not seen on the CPU; everything a tensor holds is.
    """
    device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    tracker = LiveStorage()
    with tracker:
        fn(*args, **kwargs)
    return tracker.peak
