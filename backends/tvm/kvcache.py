"""A decode's KV cache preallocated to a capacity and written in place, behind the decoder contract.

The artifact's `decode` takes past.{i}.key/value [1, h, past, d] and returns the presents with one
more row: run naively, every step copies the whole cache into a fresh allocation. When the library
has the `decode__kv_inplace` entry (lowering/module.py), the runner instead keeps each cache in a
`KVBuffer` [1, h, capacity, d] and calls that entry, which writes only the new rows; the presents it
hands back are `KVView`s (rows [0, length) of a buffer) that the next step takes as its past.

A view can be fed back in place only while it is its buffer's tip (nothing was written past it);
otherwise (the same past decoded twice, host arrays, prefill's compact presents, too small a
capacity) the rows are copied into a new buffer first, so every view keeps reading what it held.
"""

from __future__ import annotations

import numpy as np

from .runtime import DeviceTensor

MIN_CAPACITY = 64  # rows; buffers grow by doubling


class KVBuffer:
    """One cache tensor at its capacity; `tip`: the rows written so far."""

    def __init__(self, tensor, tip: int):
        self.tensor = tensor
        self.tip = tip
        self.capacity = int(tensor.shape[2])


class KVView(DeviceTensor):
    """Rows [0, length) of a KVBuffer: an output left on the device, as DeviceTensor."""

    def __init__(self, buffer: KVBuffer, length: int):
        shp = tuple(int(d) for d in buffer.tensor.shape)
        self.buffer = buffer
        self.length = length
        self.shape = (shp[0], shp[1], length, *shp[3:])
        self.dtype = np.dtype(str(buffer.tensor.dtype))
        self._compact = None

    @property
    def tensor(self):
        """A compact [b, h, length, d] copy (for entries that take the cache as it is)."""
        import tvm

        if self._compact is None:
            self._compact = tvm.runtime.tensor(self.numpy(), self.buffer.tensor.device)
        return self._compact

    def numpy(self) -> np.ndarray:
        return np.ascontiguousarray(self.buffer.tensor.numpy()[:, :, :self.length])


def capacity_for(need: int, max_context: int | None) -> int:
    cap = max(MIN_CAPACITY, 2 * need)
    cap = -(-cap // MIN_CAPACITY) * MIN_CAPACITY
    if max_context is not None and max_context >= need:
        cap = min(cap, -(-max_context // MIN_CAPACITY) * MIN_CAPACITY)
    return max(cap, need)


def kv_buffers(pasts: list, need: int, device, max_context: int | None) -> list[KVBuffer]:
    """The buffers to decode in place into: the views' own when each is its buffer's tip with room for
    `need` rows, else new buffers holding a copy of the past rows."""
    if all(isinstance(v, KVView) and v.buffer.tip == v.length and v.buffer.capacity >= need for v in pasts) \
            and len({id(v.buffer) for v in pasts}) == len(pasts):
        return [v.buffer for v in pasts]
    import tvm

    out = []
    for v in pasts:
        rows = v.numpy() if isinstance(v, DeviceTensor) else np.asarray(v)
        b, h, length = rows.shape[:3]
        buf = np.zeros((b, h, capacity_for(need, max_context), *rows.shape[3:]), rows.dtype)
        buf[:, :, :length] = rows
        out.append(KVBuffer(tvm.runtime.tensor(buf, device), length))
    return out
