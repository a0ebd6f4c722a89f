"""Values of a dataset in an untrusted file, read without HDF5's filter pipeline.

HDF5 undoes a chunk's filters into a buffer and then copies the chunk's *declared* size out
of it. Two things go wrong with a crafted file (h5py 3.16 bundles HDF5 2.0.0, which has
both; upstream fixed the first in 2026):

- a chunk that decodes *shorter* than declared is copied out of a smaller buffer: heap
  memory of the reading process (say, the chunk of another proposal's file read just
  before) ends up in the values, or the process crashes;
- a chunk that decodes *longer* (a deflate bomb: 256 KiB declared, gigabytes of output)
  is inflated in full before anything checks it.

So a chunked dataset is read here from its stored chunks (``read_direct_chunk``) with the
two filters honest NeXus files use, deflate (zlib-ng, twice as fast as HDF5's filter with
system zlib) and shuffle, each output checked to be exactly the declared size. Any other
filter (Fletcher32, LZ4, bitshuffle, scale-offset...) or a datatype numpy cannot hold
exactly (a 12-bit integer, a float with a made-up exponent, variable-length strings) is
:class:`Refused`: never handed to HDF5. Contiguous and compact storage, and chunks without
filters, have nothing to undo, and HDF5 reads them.
"""

from __future__ import annotations

import itertools
import math

import h5py
import numpy as np
import zlib_ng.zlib_ng as zlib_ng
from h5py import h5t, h5z

from portal.catalogue.nexus import Refused

#: Stored chunks one read decodes at most: a frame cut finer costs a Python loop each.
MAX_CHUNKS = 1024

Selection = tuple[int | slice, ...]


def read(dataset: h5py.Dataset, selection: Selection) -> np.ndarray:
    """``dataset[selection]`` for one index or a ``slice(start, stop, step)`` (positive
    step) per axis: the axes with a slice are kept. Raises :class:`Refused` for what this
    module will not decode (see above), or when more than :data:`MAX_CHUNKS` chunks would
    be touched."""
    filters = _filters(dataset) if dataset.chunks is not None else ()
    if not filters:  # nothing to undo: HDF5 copies the stored bytes as they are
        return dataset[selection]
    if dataset.dtype.hasobject or not dataset.id.get_type().equal(h5t.py_create(dataset.dtype)):
        raise Refused(f"{dataset.name}: its datatype is not one numpy holds exactly")
    shape, chunks, dtype = dataset.shape, dataset.chunks, dataset.dtype
    wanted = [
        range(part, part + 1) if isinstance(part, int) else range(*part.indices(extent))
        for part, extent in zip(selection, shape, strict=True)
    ]
    starts = [_starts(axis, c) for axis, c in zip(wanted, chunks, strict=True)]
    if math.prod(len(s) for s in starts) > MAX_CHUNKS:
        raise Refused(f"{dataset.name}: more than {MAX_CHUNKS} chunks to read")
    kept = [n for n, part in enumerate(selection) if not isinstance(part, int)]
    values = np.full([len(wanted[n]) for n in kept], dataset.fillvalue, dtype=dtype)
    size = math.prod(chunks) * dtype.itemsize
    stored = bytearray(_bound(size) if h5z.FILTER_DEFLATE in filters else size)
    for start in itertools.product(*starts):
        try:
            skipped, raw = dataset.id.read_direct_chunk(start, out=stored)
        except RuntimeError:  # never written: HDF5 would give the fill value too
            continue
        except ValueError:  # larger than deflate can make ``size`` bytes
            raise Refused(f"{dataset.name}: a chunk is stored larger than it can be") from None
        block = np.frombuffer(_decoded(raw, skipped, filters, size, dtype.itemsize), dtype)
        block = block.reshape(chunks)
        source: list[int | slice] = []
        target: list[slice] = []
        for part, axis, first, c in zip(selection, wanted, start, chunks, strict=True):
            if isinstance(part, int):
                source.append(part - first)
                continue
            low, high = _index(axis, first), _index(axis, first + c)  # this chunk's share
            inside = axis[low:high]
            source.append(slice(inside.start - first, inside.stop - first, axis.step))
            target.append(slice(low, high))
        values[tuple(target)] = block[tuple(source)]
    return values


def _starts(axis: range, chunk: int) -> list[int] | range:
    """The first positions of the chunks holding ``axis``'s positions, in order."""
    if not axis:
        return []
    if axis.step <= chunk:  # every chunk from the first position's to the last one's
        return range(axis[0] // chunk * chunk, axis[-1] + 1, chunk)
    return [p // chunk * chunk for p in axis]  # one position a chunk at most


def _index(axis: range, position: int) -> int:
    """How many of ``axis``'s positions lie below ``position``."""
    return len(axis[: max(0, -(-(position - axis.start) // axis.step))])


def _filters(dataset: h5py.Dataset) -> tuple[int, ...]:
    """The dataset's filters, if each is deflate (levels 0 to 9) or shuffle by the
    dataset's element size, each at most once; else :class:`Refused`."""
    plist = dataset.id.get_create_plist()
    filters = []
    for n in range(plist.get_nfilters()):
        code, _flags, values, _name = plist.get_filter(n)
        honest = (code == h5z.FILTER_DEFLATE and len(values) == 1 and 0 <= values[0] <= 9) or (
            code == h5z.FILTER_SHUFFLE and tuple(values) == (dataset.dtype.itemsize,)
        )
        if not honest or code in filters:
            raise Refused(f"{dataset.name}: filter {code} {tuple(values)} is not read here")
        filters.append(code)
    return tuple(filters)


def _bound(size: int) -> int:
    """zlib's ``compressBound``: the most deflate stores for ``size`` bytes."""
    return size + (size >> 12) + (size >> 14) + (size >> 25) + 13


def _decoded(
    raw: memoryview, skipped: int, filters: tuple[int, ...], size: int, item: int
) -> memoryview | bytes | np.ndarray:
    """One stored chunk through ``filters`` backwards, as HDF5 reads it, each output
    exactly ``size`` bytes: a deflate stream that goes on past it (a bomb) is refused having
    produced ``size`` bytes, not gigabytes, and one that ends short is refused too."""
    data: memoryview | bytes | np.ndarray = raw
    for n in reversed(range(len(filters))):
        if skipped >> n & 1:  # the writer stored this chunk without that filter
            continue
        if filters[n] == h5z.FILTER_DEFLATE:
            inflate = zlib_ng.decompressobj()
            try:
                data = inflate.decompress(data, size)
            except zlib_ng.error as e:
                raise Refused(f"a compressed chunk is corrupt: {e}") from None
            if inflate.unconsumed_tail or not inflate.eof:
                raise Refused("a compressed chunk does not inflate to its declared size")
        elif item > 1:  # shuffle: the bytes of each place in an element are stored together
            if memoryview(data).nbytes != size:
                raise Refused("a shuffled chunk is not its declared size")
            planes = np.frombuffer(data, np.uint8).reshape(item, -1)
            unshuffled = np.empty((planes.shape[1], item), dtype=np.uint8)
            for place in range(item):  # strided row copies: faster than planes.T.copy()
                unshuffled[:, place] = planes[place]
            data = unshuffled
    if memoryview(data).nbytes != size:
        raise Refused("a compressed chunk does not inflate to its declared size")
    return data


__all__ = ["MAX_CHUNKS", "read"]
