"""A thumbnail of a NeXus file's default plot, made at index time in the metadata worker.

What h5web and silx show first when a file is opened: the ``default`` attribute chain from
the root to an NXentry to an NXdata group, and that group's ``signal`` (an image, the first
frame of a stack, or a curve). The file is untrusted (see :mod:`portal.catalogue.nexus`,
whose rules this follows: only hard links inside the file, no external or virtual
storage), and a thumbnail must cost a small fraction of reading the metadata, so:

- Every step of the chain and the signal itself must be a hard link: an external link,
  a soft link, a virtual dataset (VDS) or external storage would draw another file (say,
  another proposal's data) into this dataset's thumbnail, and is refused.
- An image (or the middle frame of higher-dimensional data: the first of a tomography
  scan is often a dark field) is read by strided slicing to
  at most :data:`MAX_READ` x :data:`MAX_READ` elements (the same step on both axes, so the
  aspect ratio holds), then averaged in blocks down to at most :data:`MAX_SIDE` a side:
  thin powder rings stay rings instead of dots, as plain decimation left them. A curve is
  read whole up to :data:`MAX_CURVE` elements, else strided, and drawn as a min/max
  envelope so narrow peaks survive. A chunked signal whose touched chunks are *declared*
  larger than :data:`MAX_CHUNK_BYTES` is refused, and its chunks are decoded by
  :mod:`portal.catalogue.chunks`, never by HDF5's filters (which a crafted chunk can make
  read past its buffer, or inflate to gigabytes): deflate and shuffle only, each chunk's
  output exactly its declared size, at most :data:`~portal.catalogue.chunks.MAX_CHUNKS`
  chunks. Anything else (LZ4, bitshuffle...) is no thumbnail. The worker's own limits
  (address space, CPU time, its sandbox) are the second wall: never call :func:`thumbnail`
  on an untrusted file outside a worker.
- The colours come from silx's viridis lookup table (no matplotlib figure, no Qt), scaled
  between robust percentiles of the finite values; NaN and inf are drawn in grey. The PNG
  (indexed colour: one byte a pixel) is encoded here with zlib: a few lines, no image
  library parsing anything.

Anything else (no default plot, strings, compounds, complex numbers, an empty or a null
dataspace, a chain that loops or is too long) is simply "no thumbnail": :func:`thumbnail`
never raises.
"""

from __future__ import annotations

import functools
import math
import struct

import h5py
import numpy as np
import zlib_ng.zlib_ng as zlib_ng
from h5py import h5a, h5s, h5t

from portal.catalogue import chunks
from portal.catalogue.nexus import Refused, child, clean_text, nx_child

#: Largest side of an image thumbnail, in pixels.
MAX_SIDE = 128
#: Largest side of the part of an image read for it (averaged down to MAX_SIDE).
MAX_READ = 4 * MAX_SIDE
#: A curve up to this many elements is read whole; a longer one is read strided to this.
MAX_CURVE = 1 << 16
#: Width and height of a curve's thumbnail, in pixels.
CURVE_SIZE = (192, 128)
#: Decompressed bytes of the chunks a thumbnail's read may touch.
MAX_CHUNK_BYTES = 32 << 20
#: Hops of ``default`` attributes followed before giving up (a cycle ends here).
MAX_HOPS = 8
#: Percentiles of the finite values that map to the ends of the colour scale, and how
#: many values (evenly spread) they are taken from.
SCALE = (1.0, 99.5)
SCALE_SAMPLE = 4096
NAN_COLOUR = (160, 160, 160)
BACKGROUND = (255, 255, 255)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: A variable-length string, as numpy holds it and as HDF5 is asked to convert it.
TEXT = h5py.string_dtype()
TEXT_TYPE = h5t.py_create(TEXT)


class NoThumbnail(ValueError):
    """The file has no default plot the portal will draw; the message says why."""


@functools.cache
def colour_table() -> np.ndarray:
    """silx's viridis as 256 RGB rows (what silx's plots use by default)."""
    from silx.math.colormap import get_colormap_lut

    return np.ascontiguousarray(get_colormap_lut("viridis")[:, :3], dtype=np.uint8)


def _attr(item: h5py.Group, name: str) -> str:
    """An attribute as text, ``""`` when there is none. The chain reads a few per file and
    they are nearly always one variable-length string: that case is read with the low-level
    API (a third cheaper than ``attrs[name]``); any other type, shape or a null dataspace
    goes through ``attrs[name]`` as before."""
    try:
        attr = h5a.open(item.id, name.encode())
    except KeyError:
        return ""
    kind = attr.get_type()
    if (
        isinstance(kind, h5t.TypeStringID)
        and kind.is_variable_str()
        and attr.get_space().get_simple_extent_type() == h5s.SCALAR  # one string, no more
    ):
        value = np.empty((), dtype=TEXT)
        attr.read(value, mtype=TEXT_TYPE)
        return clean_text(value[()].decode("utf-8", "surrogateescape"))
    return clean_text(item.attrs[name])


def _group_at(start: h5py.Group, path: str) -> h5py.Group | h5py.Dataset | None:
    """``path`` (a child's name, names joined by ``/``, or absolute) from ``start``, through
    hard links only (:func:`~portal.catalogue.nexus.child` raises :class:`Refused` otherwise)."""
    item: h5py.Group | h5py.Dataset | None = start.file if path.startswith("/") else start
    for name in path.strip("/").split("/"):
        if not isinstance(item, h5py.Group):
            return None
        item = child(item, name)
    return item


def default_signal(f: h5py.File) -> h5py.Dataset:
    """The dataset h5web and silx plot first: ``default`` attributes from the root to an
    NXdata group, then its ``signal``. Where a group has no ``default`` at all, its first
    NXentry (at the root) or NXdata (below) is taken, as the metadata reader does; one
    that names nothing readable means no plot. Raises :class:`NoThumbnail` or
    :class:`Refused`."""
    group: h5py.Group = f
    for hop in range(MAX_HOPS):
        if hop and _attr(group, "NX_class") == "NXdata":  # the root is NXroot
            break
        name, fallback = _attr(group, "default"), "NXdata" if hop else "NXentry"
        found = _group_at(group, name) if name else nx_child(group, fallback)
        if not isinstance(found, h5py.Group):
            raise NoThumbnail(f"{group.name} names no default plot")
        group = found
    else:
        raise NoThumbnail(f"the default chain is longer than {MAX_HOPS} steps (a cycle?)")
    name = _attr(group, "signal")
    signal = child(group, name) if name else None
    if not isinstance(signal, h5py.Dataset):
        raise NoThumbnail(f"{group.name} has no signal dataset")
    return signal


def _chunk_bytes(signal: h5py.Dataset, selection: tuple) -> int:
    """Decompressed bytes of the chunks that reading ``selection`` touches (an upper
    bound; 0 for contiguous storage, which is read element by element)."""
    if signal.chunks is None:
        return 0
    touched = 1
    for size, chunk, part in zip(signal.shape, signal.chunks, selection, strict=True):
        if isinstance(part, int):
            continue  # one index: one chunk along this axis
        count = len(range(*part.indices(size)))
        touched *= min(count, -(-size // chunk))
    return touched * math.prod(signal.chunks) * signal.dtype.itemsize


def sample(signal: h5py.Dataset) -> np.ndarray:
    """At most :data:`MAX_READ` squared (an image) or :data:`MAX_CURVE` (a curve) values
    of ``signal``, in its own type (an image is averaged down to float64 without a
    full-size float64 copy first); never the whole of a large array."""
    if signal.is_virtual or signal.external:
        raise Refused(f"{signal.name} is stored outside the file; refusing to read it")
    if signal.dtype.kind not in "biuf" or signal.dtype.itemsize > 8:
        raise NoThumbnail(f"{signal.name} is of type {signal.dtype}, not numbers to plot")
    shape = signal.shape
    if not shape or any(n <= 0 for n in shape):
        raise NoThumbnail(f"{signal.name} has no values to plot (shape {shape})")
    # The last one or two axes longer than 1 are plotted; of the others, the middle index.
    axes = [n for n, size in enumerate(shape) if size > 1][-2:]
    selection: list = [size // 2 for size in shape]
    limit = MAX_READ if len(axes) == 2 else MAX_CURVE
    step = -(-max((shape[a] for a in axes), default=1) // limit)
    for a in axes:
        selection[a] = slice(0, shape[a], step)
    touched = _chunk_bytes(signal, tuple(selection))
    if touched > MAX_CHUNK_BYTES:
        raise NoThumbnail(f"{signal.name}: its chunks are too large to read for a thumbnail")
    return np.atleast_1d(chunks.read(signal, tuple(selection)))


def _scaled(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values mapped to 0..1 between robust percentiles (of at most :data:`SCALE_SAMPLE`
    of them, evenly spread), and the mask of finite ones."""
    finite = np.isfinite(values)
    everywhere = bool(finite.all())
    kept = values.ravel() if everywhere else values[finite]
    if not kept.size:
        raise NoThumbnail("no finite value to plot")
    spread = kept[:: -(-kept.size // SCALE_SAMPLE)]
    # Nearest-rank percentiles by one partial sort: a tenth of np.percentile's cost.
    ranks = [round(q / 100 * (spread.size - 1)) for q in SCALE]
    low, high = np.partition(spread, ranks)[ranks]
    span = high - low if high > low else 1.0
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = (values if everywhere else np.where(finite, values, low)) - low
        scaled *= 1.0 / span
        np.clip(scaled, 0.0, 1.0, out=scaled)
    return scaled, finite


def reduced(values: np.ndarray) -> np.ndarray:
    """An image averaged in square blocks to at most :data:`MAX_SIDE` a side, as float64;
    a block with no finite value stays NaN (drawn grey)."""
    block = -(-max(values.shape) // MAX_SIDE)
    if block == 1:
        return values.astype(np.float64)
    rows, cols = (n // block * block or n for n in values.shape)
    values = values[:rows, :cols]
    if values.shape[0] < block or values.shape[1] < block:  # a sliver: decimate instead
        return values[::block, ::block].astype(np.float64)
    # Blocks of at most 4 x 4 (the read is at most 4 times MAX_SIDE a side): summing the
    # block's strided views is ten times faster than a mean over a reshaped array, and
    # summing them into one float64 block-sized array (integers are always finite) spares
    # converting the whole read to float64 first.
    offsets = [(i, j) for i in range(block) for j in range(block)]
    if values.dtype.kind != "f" or np.isfinite(values).all():  # the usual case
        total = values[::block, ::block].astype(np.float64)
        for i, j in offsets[1:]:
            np.add(total, values[i::block, j::block], out=total)
        total /= len(offsets)
        return total
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    zeroed = np.where(finite, values, 0.0)
    total = sum(zeroed[i::block, j::block] for i, j in offsets)
    count = sum(finite[i::block, j::block].astype(np.int64) for i, j in offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


@functools.cache
def palette() -> np.ndarray:
    """The thumbnails' 256 colours: NaN grey, white, and viridis in 254 steps. One byte a
    pixel (an indexed PNG) is a third of RGB to compress, and to keep."""
    lut = colour_table()[np.linspace(0, 255, 254).round().astype(int)]
    return np.vstack([[NAN_COLOUR, BACKGROUND], lut]).astype(np.uint8)


NAN_INDEX, BACKGROUND_INDEX, FIRST = 0, 1, 2
LINE_INDEX = FIRST + 40  # a dark viridis blue


def image_pixels(values: np.ndarray) -> np.ndarray:
    """An image's palette indices, first row at the bottom as h5web and silx draw it."""
    scaled, finite = _scaled(reduced(values))
    scaled *= 255 - FIRST
    indices = scaled.astype(np.uint8)
    indices += FIRST
    if not finite.all():
        indices[~finite] = NAN_INDEX
    return indices[::-1]


def curve_pixels(values: np.ndarray) -> np.ndarray:
    """A curve as a line on a white canvas, as palette indices. A short curve is
    interpolated to one value per pixel column; a long one is drawn as the span of its
    values in each column, so narrow peaks survive. Each column's span is joined to the
    next one's: a continuous line."""
    width, height = CURVE_SIZE
    scaled, finite = _scaled(values.astype(np.float64))
    x, y = np.flatnonzero(finite), scaled[finite]
    if len(values) < width:
        position = np.arange(width) * (len(values) - 1) / (width - 1)
        low = high = np.round((1.0 - np.interp(position, x, y)) * (height - 1)).astype(np.int64)
    else:
        column = x * width // len(values)  # in order: each column's values are a run
        row = np.round((1.0 - y) * (height - 1)).astype(np.int64)
        starts = np.flatnonzero(np.diff(column, prepend=-1))
        low = np.full(width, height, dtype=np.int64)  # no value in a column: nothing drawn
        high = np.full(width, -1, dtype=np.int64)
        low[column[starts]] = np.minimum.reduceat(row, starts)
        high[column[starts]] = np.maximum.reduceat(row, starts)
    low = np.minimum(low, np.append(low[1:], height)) - 1  # and two pixels thick
    high = np.maximum(high, np.append(high[1:], -1)) + 1
    rows = np.arange(height)[:, None]
    line = (rows >= low[None, :]) & (rows <= high[None, :])
    return np.where(line, LINE_INDEX, BACKGROUND_INDEX).astype(np.uint8)


def png(indices: np.ndarray) -> bytes:
    """``indices`` (height x width, uint8) into :func:`palette` as a PNG file: 8-bit
    indexed colour, no filter, compressed with zlib-ng's run-length strategy (made for PNG
    images: faster than its default, and as small here)."""
    height, width = indices.shape
    rows = np.zeros((height, 1 + width), dtype=np.uint8)  # filter byte 0: none
    rows[:, 1:] = indices

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib_ng.crc32(kind + data)
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", crc)

    header = struct.pack("!IIBBBBB", width, height, 8, 3, 0, 0, 0)
    deflate = zlib_ng.compressobj(1, zlib_ng.DEFLATED, 15, 8, zlib_ng.Z_RLE)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"PLTE", palette().tobytes())
        + chunk(b"IDAT", deflate.compress(rows.tobytes()) + deflate.flush())
        + chunk(b"IEND", b"")
    )


def render(f: h5py.File) -> bytes:
    """The PNG thumbnail of an open file's default plot; raises why there is none."""
    values = sample(default_signal(f))
    return png(curve_pixels(values) if values.ndim == 1 else image_pixels(values))


def thumbnail(f: h5py.File) -> bytes | None:
    """:func:`render`, or ``None`` whatever the file does: a thumbnail is never worth
    losing a dataset's metadata over."""
    try:
        return render(f)
    except Exception:  # everything here is the file's fault (see render for what it refuses)
        return None


__all__ = [
    "MAX_CHUNK_BYTES",
    "MAX_CURVE",
    "MAX_READ",
    "MAX_SIDE",
    "NoThumbnail",
    "default_signal",
    "png",
    "render",
    "sample",
    "thumbnail",
]
