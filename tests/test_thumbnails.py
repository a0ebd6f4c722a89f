"""Thumbnails of NeXus default plots and tree summaries, made at index time from untrusted files.

Each attack test first shows that plain h5py *would* read the other file (the attack is
real), then that the thumbnail does not. The last tests index a real tree with the real
local catalogue and its sandboxed workers.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import h5py
import numpy as np
import pytest
from h5py import h5d, h5p, h5s, h5t
from PIL import Image

from portal.catalogue import CatalogueUser
from portal.catalogue.local import LocalCatalogue
from portal.catalogue.nexus import MAX_THUMBNAIL, FileMetadata, Refused
from portal.catalogue.thumbnails import (
    CURVE_SIZE,
    MAX_CURVE,
    MAX_READ,
    MAX_SIDE,
    NoThumbnail,
    colour_table,
    default_signal,
    render,
    sample,
    thumbnail,
)
from portal.catalogue.tree import MAX_ENTRIES, summarise

#: Another proposal's data: what a crafted file tries to draw into its own thumbnail.
SECRET_IMAGE = np.arange(64 * 64, dtype=np.float64).reshape(64, 64)


def nexus(path: Path, build: Callable[[h5py.Group], None], entry_default: str = "data") -> Path:
    """A NeXus file: root -> entry -> ``entry_default``, with ``build(entry)`` filling it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs.update(NX_class="NXentry", default=entry_default)
        entry["title"] = f"{path.stem} title"
        build(entry)
    return path


def nxdata(entry: h5py.Group, values: object = None, name: str = "data") -> h5py.Group:
    group = entry.create_group(name)
    group.attrs.update(NX_class="NXdata", signal="signal")
    if values is not None:
        group["signal"] = values
    return group


def pixels(png: bytes) -> np.ndarray:
    """The PNG decoded by Pillow (an independent decoder), as an RGB array."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def drawn(path: Path) -> bytes | None:
    with h5py.File(path, "r") as f:
        return thumbnail(f)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """IH2002's embargoed image, in a file of its own."""
    return nexus(tmp_path / "IH2002/secret.nxs", lambda e: nxdata(e, SECRET_IMAGE))


# -- what a thumbnail shows -------------------------------------------------------------


def test_an_image_is_coloured_by_viridis_with_its_first_row_at_the_bottom(tmp_path: Path) -> None:
    image = np.tile(np.arange(40, dtype=np.float64)[:, None], (1, 30))  # rows 0..39
    png = drawn(nexus(tmp_path / "f.nxs", lambda e: nxdata(e, image)))
    rgb = pixels(png)
    assert rgb.shape == (40, 30, 3)
    lut = colour_table()
    assert tuple(rgb[-1, 0]) == tuple(lut[0])  # row 0, the lowest value, at the bottom
    assert tuple(rgb[0, 0]) == tuple(lut[255])  # the highest at the top


def test_a_large_image_becomes_at_most_128_a_side_keeping_its_shape(tmp_path: Path) -> None:
    wide = np.random.default_rng(1).random((300, 1200))
    rgb = pixels(drawn(nexus(tmp_path / "f.nxs", lambda e: nxdata(e, wide))))
    # read with step ceil(1200 / 512) = 3 (100 x 400), averaged in blocks of 4
    assert rgb.shape[:2] == (25, 100)


def test_thin_rings_stay_rings_averaged_not_decimated(tmp_path: Path) -> None:
    """One-pixel powder rings: decimating a 1024 image to 128 keeps 1 pixel in 8 per axis,
    so a ring lands on a kept pixel only here and there, and shows as dots."""
    y, x = np.mgrid[-512:512, -512:512]
    radius = np.hypot(x, y)
    rings = ((np.abs(radius - 160) < 0.5) | (np.abs(radius - 320) < 0.5)).astype(np.float32)
    path = nexus(tmp_path / "f.nxs", lambda e: nxdata(e, rings))
    rgb = pixels(drawn(path)).astype(int)
    assert rgb.shape == (128, 128, 3)
    dark = rgb[64 + 10, 64].sum()  # between the centre and the first ring
    for ring in (160 / 8, 320 / 8):  # 1024 pixels became 128
        circle = [
            (64 + round(ring * np.sin(a) - 0.5), 64 + round(ring * np.cos(a) - 0.5))
            for a in np.linspace(0, 2 * np.pi, 90, endpoint=False)
        ]
        lit = sum(rgb[r, c].sum() > dark + 60 for r, c in circle)
        assert lit >= 75, f"the ring of radius {ring} is lit at {lit} of 90 points round it"


def test_a_stack_shows_its_middle_frame_not_a_dark_field(tmp_path: Path) -> None:
    stack = np.zeros((5, 20, 20))
    stack[2, :10] = 1.0  # the middle frame: lower half bright; the others are dark
    rgb = pixels(drawn(nexus(tmp_path / "f.nxs", lambda e: nxdata(e, stack))))
    lut = colour_table()
    assert tuple(rgb[-1, 0]) == tuple(lut[255]) and tuple(rgb[0, 0]) == tuple(lut[0])


def test_a_curve_is_a_line_and_a_one_point_peak_survives_in_60000(tmp_path: Path) -> None:
    curve = np.zeros(60_000)
    curve[31_337] = 100.0
    rgb = pixels(drawn(nexus(tmp_path / "f.nxs", lambda e: nxdata(e, curve))))
    assert rgb.shape == (CURVE_SIZE[1], CURVE_SIZE[0], 3)
    ink = (rgb != 255).any(axis=2)
    assert ink[0].any(), "the peak reaches the top row"
    assert ink[-1].sum() > CURVE_SIZE[0] * 0.9, "the baseline runs along the bottom"


def test_nan_and_inf_are_grey_and_do_not_break_the_scale(tmp_path: Path) -> None:
    image = np.ones((10, 10))
    image[0, 0], image[1, 1], image[2, 2] = np.nan, np.inf, -np.inf
    image[5:] = 2.0
    rgb = pixels(drawn(nexus(tmp_path / "f.nxs", lambda e: nxdata(e, image))))
    assert tuple(rgb[-1, 0]) == (160, 160, 160)  # row 0, column 0: NaN
    assert len({tuple(p) for p in rgb.reshape(-1, 3)}) == 3  # grey, low and high


def test_no_default_attributes_falls_back_to_the_first_entry_and_nxdata(tmp_path: Path) -> None:
    path = tmp_path / "f.nxs"
    with h5py.File(path, "w") as f:
        entry = f.create_group("scan")
        entry.attrs["NX_class"] = "NXentry"
        nxdata(entry, np.arange(10.0), name="plot")
    assert drawn(path) is not None


# -- attacks: never another file, never a crash, a hang or a big read -----------------


def test_an_external_link_as_signal_is_refused(tmp_path: Path, victim: Path) -> None:
    def build(entry: h5py.Group) -> None:
        nxdata(entry)["signal"] = h5py.ExternalLink(str(victim), "/entry/data/signal")

    crafted = nexus(tmp_path / "MA1234/f.nxs", build)
    with h5py.File(crafted, "r") as f:
        assert np.array_equal(f["entry/data/signal"][()], SECRET_IMAGE)  # h5py would follow
        with pytest.raises(Refused, match="ExternalLink"):
            render(f)
    assert drawn(crafted) is None


def test_an_external_link_on_the_default_chain_is_refused(tmp_path: Path, victim: Path) -> None:
    def build(entry: h5py.Group) -> None:
        entry["data"] = h5py.ExternalLink(str(victim), "/entry/data")

    crafted = nexus(tmp_path / "MA1234/f.nxs", build)
    with h5py.File(crafted, "r") as f:
        assert f["entry/data"].attrs["NX_class"] == "NXdata"  # h5py would follow
        with pytest.raises(Refused):
            render(f)


def test_a_virtual_dataset_over_another_file_is_refused(tmp_path: Path, victim: Path) -> None:
    def build(entry: h5py.Group) -> None:
        layout = h5py.VirtualLayout(shape=SECRET_IMAGE.shape, dtype="f8")
        layout[:] = h5py.VirtualSource(str(victim), "/entry/data/signal", SECRET_IMAGE.shape)
        nxdata(entry).create_virtual_dataset("signal", layout)

    crafted = nexus(tmp_path / "MA1234/f.nxs", build)
    with h5py.File(crafted, "r") as f:
        assert np.array_equal(f["entry/data/signal"][()], SECRET_IMAGE)  # h5py would read it
        with pytest.raises(Refused, match="outside the file"):
            render(f)


def test_external_raw_storage_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "IH2002/raw.bin"
    raw.parent.mkdir(parents=True)
    raw.write_bytes(SECRET_IMAGE.tobytes())

    def build(entry: h5py.Group) -> None:
        nxdata(entry).create_dataset(
            "signal", shape=SECRET_IMAGE.shape, dtype="f8", external=[(raw, 0, raw.stat().st_size)]
        )

    crafted = nexus(tmp_path / "MA1234/f.nxs", build)
    with h5py.File(crafted, "r") as f:
        assert np.array_equal(f["entry/data/signal"][()], SECRET_IMAGE)
        with pytest.raises(Refused, match="outside the file"):
            render(f)


def test_soft_links_on_the_chain_are_refused_too(tmp_path: Path) -> None:
    """Kept simple: a soft link could name anything, so none is followed, inside or out."""

    def build(entry: h5py.Group) -> None:
        nxdata(entry, np.arange(10.0), name="real")
        entry["data"] = h5py.SoftLink("/entry/real")

    path = nexus(tmp_path / "f.nxs", build)
    with h5py.File(path, "r") as f, pytest.raises(Refused, match="SoftLink"):
        render(f)


def test_huge_declared_shapes_and_chunks_are_refused_without_reading(tmp_path: Path) -> None:
    def build(entry: h5py.Group) -> None:
        data = nxdata(entry)
        data.create_dataset("signal", shape=(1 << 20, 1 << 20), dtype="f8", chunks=(4096, 4096))
        curve = nxdata(entry, name="curve")
        curve.create_dataset("signal", shape=(1 << 40,), dtype="f4", chunks=(1 << 24,))

    path = nexus(tmp_path / "f.nxs", build)
    started = time.monotonic()
    for default in ("data", "curve"):
        with h5py.File(path, "r+") as f:
            f["entry"].attrs["default"] = default
        with h5py.File(path, "r") as f, pytest.raises(NoThumbnail, match="chunks are too large"):
            render(f)
    assert time.monotonic() - started < 5


def test_a_deflate_bomb_chunk_is_refused_without_inflating_it(tmp_path: Path) -> None:
    """A chunk declared as 256 KiB whose deflate stream inflates to 256 MiB. HDF5's own
    filter grows its buffer until the stream ends (HDF5 2.0.0 on this machine allocates
    all of it; how far a given build goes is its own business). The thumbnail must stop
    at the declared size. Measured in a child process, by the growth of its peak memory."""
    declared = (256, 256)

    def build(entry: h5py.Group) -> None:
        signal = nxdata(entry).create_dataset(
            "signal", shape=declared, dtype="i4", chunks=declared, compression="gzip"
        )
        deflate = zlib.compressobj(9)
        zeros = bytes(1 << 20)
        bomb = b"".join(deflate.compress(zeros) for _ in range(256)) + deflate.flush()
        signal.id.write_direct_chunk((0, 0), bomb)

    path = nexus(tmp_path / "bomb.nxs", build)
    assert path.stat().st_size < 1 << 20
    with h5py.File(path, "r") as f:  # the attack is real: the stored chunk inflates to 256 MiB
        _, stored = f["entry/data/signal"].id.read_direct_chunk((0, 0))
    inflate, inflated = zlib.decompressobj(), 0
    while stored:
        inflated += len(inflate.decompress(stored, 1 << 20))
        stored = inflate.unconsumed_tail
    assert inflated == 256 << 20
    probe = textwrap.dedent(
        f"""
        import resource, h5py
        from portal.catalogue.thumbnails import thumbnail
        with h5py.File({str(path)!r}, "r") as f:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            assert thumbnail(f) is None
            grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(grown // 1024)
        """
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert int(run.stdout) < 16  # MiB


def _typed(entry: h5py.Group, kind: h5t.TypeID, stored: bytes, deflate: int = 4) -> None:
    """A 64 x 64 signal of an HDF5 type made by hand, one chunk, its bytes stored as given."""
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_chunk((64, 64))
    dcpl.set_deflate(deflate)
    group = nxdata(entry)
    signal = h5d.create(group.id, b"signal", kind, h5s.create_simple((64, 64)), dcpl=dcpl)
    signal.write_direct_chunk((0, 0), zlib.compress(stored))


def _patched(path: Path, filter_message: bytes, value: int) -> None:
    """The first parameter of a filter in the file's pipeline message, changed in place."""
    data = bytearray(path.read_bytes())
    at = data.find(filter_message)
    assert at > 0 and data.count(filter_message) == 1
    data[at + len(filter_message) - 4] = value
    path.write_bytes(bytes(data))


def _twelve_bits(entry: h5py.Group) -> None:
    kind = h5t.STD_U32LE.copy()
    kind.set_precision(12)
    kind.set_offset(4)
    _typed(entry, kind, (np.arange(64 * 64, dtype="<u4") * 0x10001).tobytes())


def _odd_float(entry: h5py.Group) -> None:
    kind = h5t.IEEE_F32LE.copy()
    kind.set_ebias(100)
    _typed(entry, kind, np.linspace(1, 2, 64 * 64).astype("<f4").tobytes())


def _short_chunk(entry: h5py.Group) -> None:
    """HDF5 2.0.0 copies a chunk's declared size out of the 16 bytes this inflates to: heap
    memory in the pixels, or a crash when the chunk is large."""
    signal = nxdata(entry).create_dataset(
        "signal", shape=(16, 2048), dtype="<i4", chunks=(16, 1024), compression="gzip"
    )
    signal.id.write_direct_chunk((0, 1024), zlib.compress(b"\x07\x00\x00\x00" * 4))


def _bomb(zeros_mib: int = 64) -> bytes:
    deflate = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    return b"".join(deflate.compress(zeros) for _ in range(zeros_mib)) + deflate.flush()


def _bomb_behind_a_hole(entry: h5py.Group) -> None:
    signal = nxdata(entry).create_dataset(
        "signal", shape=(512, 256), dtype="i4", chunks=(256, 256), compression="gzip"
    )
    signal.id.write_direct_chunk((256, 0), _bomb())  # chunk (0, 0) never written


def _bomb_strided(entry: h5py.Group) -> None:
    signal = nxdata(entry).create_dataset(
        "signal", shape=(2048, 2048), dtype="i4", chunks=(1, 2048), compression="gzip"
    )
    signal.id.write_direct_chunk((0, 0), _bomb())


CRAFTED = {
    "a chunk that inflates short": (_short_chunk, "does not inflate to its declared size"),
    "a bomb behind a chunk never written": (_bomb_behind_a_hole, "does not inflate"),
    "a bomb in a strided read": (_bomb_strided, "stored larger than it can be"),
    "a 12-bit integer type": (_twelve_bits, "datatype is not one numpy holds exactly"),
    "a float with a made-up exponent bias": (_odd_float, "datatype is not one numpy holds"),
    "fletcher32": (
        lambda e: nxdata(e).create_dataset(
            "signal", data=np.ones((60, 60)), chunks=(20, 20), fletcher32=True
        ),
        "filter 3",
    ),
    "more chunks than decoded": (
        lambda e: nxdata(e).create_dataset(
            "signal", data=np.ones((64, 64)), chunks=(1, 2), compression="gzip"
        ),
        "more than 1024 chunks",
    ),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_chunks_are_refused_and_never_given_to_hdf5s_filters(
    tmp_path: Path, case: str
) -> None:
    build, message = CRAFTED[case]
    path = nexus(tmp_path / "crafted.nxs", build)
    with h5py.File(path, "r") as f:
        with pytest.raises(Refused, match=message):
            sample(default_signal(f))
        assert thumbnail(f) is None


@pytest.mark.parametrize(
    ("message", "value", "what"),
    [
        (b"\x01\x00\x08\x00\x01\x00\x01\x00deflate\x00\x04\x00\x00\x00", 200, "deflate level 200"),
        (b"\x02\x00\x08\x00\x01\x00\x01\x00shuffle\x00\x04\x00\x00\x00", 2, "shuffle by 2 bytes"),
    ],
)
def test_filter_parameters_hdf5_would_misread_are_refused(
    tmp_path: Path, message: bytes, value: int, what: str
) -> None:
    values = np.arange(64 * 64, dtype="<i4").reshape(64, 64) * 1000
    path = nexus(
        tmp_path / "f.nxs",
        lambda e: nxdata(e).create_dataset(
            "signal", data=values, chunks=(64, 64), shuffle=True, compression="gzip"
        ),
    )
    _patched(path, message, value)
    with h5py.File(path, "r") as f, pytest.raises(Refused, match="is not read here"):
        sample(default_signal(f))


def test_a_compressed_title_is_read_and_a_crafted_one_left_out(tmp_path: Path) -> None:
    """Metadata fields go through the same decoder: a gzip title reads; one that inflates
    short (HDF5 would copy heap memory into it) is left out, the rest of the file kept."""
    from portal.catalogue.nexus import metadata_of

    def build(entry: h5py.Group) -> None:
        del entry["title"]
        entry.create_dataset(
            "title", data=np.frombuffer(b"compressed title", "S1"), chunks=(16,), compression="gzip"
        )
        short = entry.create_dataset(
            "definition", shape=(64,), dtype="S1", chunks=(64,), compression="gzip"
        )
        short.id.write_direct_chunk((0,), zlib.compress(b"NXsas"))

    path = nexus(tmp_path / "f.nxs", build)
    with h5py.File(path, "r") as f:
        meta = metadata_of(f)
    assert "definition" not in meta
    assert "c" in meta.get("title", "")


def test_a_chunk_stored_larger_than_declared_is_refused(tmp_path: Path) -> None:
    """A 16 KiB chunk stored as 4 MiB: a valid deflate stream, then padding."""
    values = np.ones((64, 64), dtype="i4")

    def build(entry: h5py.Group) -> None:
        signal = nxdata(entry).create_dataset(
            "signal", shape=(64, 64), dtype="i4", chunks=(64, 64), compression="gzip"
        )
        signal.id.write_direct_chunk((0, 0), zlib.compress(values.tobytes()) + bytes(4 << 20))

    path = nexus(tmp_path / "padded.nxs", build)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["entry/data/signal"][()], values)  # HDF5 reads it
        with pytest.raises(Refused, match="stored larger than it can be"):
            render(f)


LAYOUTS = {
    "gzip and shuffle": dict(shape=(200, 300), chunks=(64, 128), compression="gzip", shuffle=True),
    "gzip only, big-endian": dict(
        shape=(130, 70), chunks=(50, 70), compression="gzip", dtype=">f8"
    ),
    "shuffle only": dict(shape=(90, 90), chunks=(32, 32), shuffle=True, dtype="u2"),
    "stack, chunks of 3 frames": dict(
        shape=(7, 40, 50), chunks=(3, 16, 50), compression="gzip", shuffle=True
    ),
    "one byte a value": dict(shape=(33, 65), chunks=(8, 8), compression="gzip", dtype="u1"),
    "strided: 1,000 rows of chunks, 125 read": dict(
        shape=(1000, 600), chunks=(1, 600), compression="gzip", shuffle=True, dtype="<u2"
    ),
    "chunks without filters": dict(shape=(70, 70), chunks=(32, 32), dtype="<f4"),
    "a curve": dict(shape=(5000,), chunks=(1024,), compression="gzip", shuffle=True, dtype="f4"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunks_read_directly_give_what_hdf5_reads(tmp_path: Path, layout: str) -> None:
    options = dict(LAYOUTS[layout])
    shape, dtype = options.pop("shape"), options.pop("dtype", "i4")
    values = np.random.default_rng(7).integers(0, 60_000, shape).astype(dtype)

    def build(entry: h5py.Group) -> None:
        nxdata(entry).create_dataset("signal", data=values, **options)

    path = nexus(tmp_path / "f.nxs", build)
    middle = values[len(values) // 2] if len(shape) == 3 else values
    step = -(-max(middle.shape) // (MAX_READ if middle.ndim == 2 else MAX_CURVE))
    with h5py.File(path, "r") as f:
        read = sample(default_signal(f))
    np.testing.assert_array_equal(read, middle[(slice(None, None, step),) * middle.ndim])


def test_chunks_never_written_or_stored_unfiltered_read_right(tmp_path: Path) -> None:
    """A chunk never written holds the fill value (HDF5 reads it); a chunk the writer
    stored without its deflate filter (bit 1 of its filter mask) is read as it is."""
    values = np.arange(64 * 64, dtype="<i4").reshape(64, 64)

    def build(entry: h5py.Group) -> None:
        signal = nxdata(entry).create_dataset(
            "signal",
            shape=(64, 64),
            dtype="<i4",
            chunks=(32, 64),
            compression="gzip",
            shuffle=True,
            fillvalue=-1,
        )
        signal[:32] = values[:32]
        plain = np.ascontiguousarray(values[32:].view(np.uint8).reshape(-1, 4).T).tobytes()
        signal.id.write_direct_chunk((32, 0), plain, filter_mask=0b10)  # shuffled, not deflated

    path = nexus(tmp_path / "f.nxs", build)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(sample(default_signal(f)), values)
    with h5py.File(path, "r+") as f:
        del f["entry/data/signal"]
        f["entry/data"].create_dataset(
            "signal",
            shape=(64, 64),
            dtype="<i4",
            chunks=(32, 64),
            compression="gzip",
            fillvalue=-1,
        )[:32] = values[:32]
    with h5py.File(path, "r") as f:
        read = sample(default_signal(f))
    np.testing.assert_array_equal(read[:32], values[:32])
    assert (read[32:] == -1).all()


def test_a_huge_contiguous_image_is_read_strided(tmp_path: Path) -> None:
    def build(entry: h5py.Group) -> None:
        nxdata(entry).create_dataset("signal", shape=(100_000, 100_000), dtype="f8")

    path = nexus(tmp_path / "f.nxs", build)
    assert path.stat().st_size < 100_000  # 80 GB declared, nothing stored: reads the fill value
    started = time.monotonic()
    assert 120 <= pixels(drawn(path)).shape[0] <= MAX_SIDE
    assert time.monotonic() - started < 5


NOT_PLOTTABLE = {
    "strings": np.array([b"a", b"b"]),
    "compound": np.zeros(4, dtype=[("x", "f4"), ("y", "i4")]),
    "complex": np.ones(4, dtype=np.complex128),
    "scalar": 3.0,
    "zero-size": np.zeros((0, 5)),
    "all NaN": np.full((4, 4), np.nan),
}


@pytest.mark.parametrize("kind", NOT_PLOTTABLE)
def test_what_is_not_numbers_to_plot_is_no_thumbnail(tmp_path: Path, kind: str) -> None:
    path = nexus(tmp_path / "f.nxs", lambda e: nxdata(e, NOT_PLOTTABLE[kind]))
    with h5py.File(path, "r") as f, pytest.raises(NoThumbnail):
        render(f)
    assert drawn(path) is None


def test_a_null_dataspace_is_no_thumbnail(tmp_path: Path) -> None:
    path = nexus(tmp_path / "f.nxs", lambda e: nxdata(e, h5py.Empty("f8")))
    assert drawn(path) is None


@pytest.mark.parametrize(
    "chain",
    ["missing", "cycle", "dot-dot", "signal missing", "signal names a group"],
)
def test_a_broken_default_chain_is_no_thumbnail_and_ends(tmp_path: Path, chain: str) -> None:
    def build(entry: h5py.Group) -> None:
        data = nxdata(entry, np.arange(4.0), name="real")
        if chain == "missing":
            entry.attrs["default"] = "nowhere"
        elif chain == "cycle":  # entry/loop is entry itself, hard-linked; NX_class unset
            entry["loop"] = entry
            entry.attrs["default"] = "loop"
        elif chain == "dot-dot":
            entry.attrs["default"] = ".."
        elif chain == "signal missing":
            entry.attrs["default"] = "real"
            data.attrs["signal"] = "nothing"
        else:
            entry.attrs["default"] = "real"
            data.create_group("grp")
            data.attrs["signal"] = "grp"

    path = nexus(tmp_path / "f.nxs", build)
    started = time.monotonic()
    with h5py.File(path, "r") as f, pytest.raises(NoThumbnail):
        render(f)
    assert time.monotonic() - started < 2


# -- the tree summary ---------------------------------------------------------------------


def test_the_tree_lists_links_without_following_them_and_stops(
    tmp_path: Path, victim: Path
) -> None:
    path = tmp_path / "f.nxs"
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["loop"] = entry  # a group hard-linked into itself
        entry["stolen"] = h5py.ExternalLink(str(victim), "/entry")
        entry["bad\x1b[31mname"] = np.zeros((3, 4), dtype="i2")
        many = f.create_group("many")
        for n in range(MAX_ENTRIES + 50):
            many.create_group(f"g{n:04d}")
    with h5py.File(path, "r") as f:
        started = time.monotonic()
        entries = summarise(f)
        assert time.monotonic() - started < 5
    by_path = {e.path: e for e in entries}
    assert len(entries) == MAX_ENTRIES
    assert by_path["/entry"].nx_class == "NXentry" and by_path["/entry"].depth == 0
    assert by_path["/entry/bad [31mname"].shape == (3, 4)
    assert by_path["/entry/bad [31mname"].dtype == "int16"
    assert by_path["/entry/stolen"].kind == "link"
    assert not any(p.startswith("/entry/stolen/") for p in by_path)  # never followed
    assert not any(p.startswith("/entry/loop/") for p in by_path)  # walked once only


def test_a_taken_over_worker_cannot_slip_anything_past_the_indexer() -> None:
    png = render_png()
    good = FileMetadata.of(
        {
            "meta": {"title": "t"},
            "tree": [["/entry", "group", "NXentry", None, ""]],
            "thumbnail": base64.b64encode(png).decode(),
        }
    )
    assert good.thumbnail == png and good.tree[0].path == "/entry"
    for thumbnail_value in (
        base64.b64encode(b"<script>alert(1)</script>").decode(),  # not a PNG
        base64.b64encode(png + b"x" * MAX_THUMBNAIL).decode(),  # too large
        "not base64!",
    ):
        bad = FileMetadata.of(
            {
                "meta": {"title": "t"},
                "tree": [["/x", "exec", "", None, ""]],
                "thumbnail": thumbnail_value,
            }
        )
        assert bad == {"title": "t"} and bad.thumbnail is None and bad.tree == ()


def render_png() -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        nxdata(entry, np.eye(8))
    with h5py.File(io.BytesIO(buffer.getvalue()), "r") as f:
        return render(f)


# -- through the indexer's sandboxed workers ----------------------------------------------


def test_the_index_keeps_thumbnails_and_trees_and_refuses_another_files_plot(
    tmp_path: Path, victim: Path
) -> None:
    root = tmp_path
    nexus(root / "MA1234/ID21/map_0001/map_0001.nxs", lambda e: nxdata(e, np.eye(32)))

    def stealing(entry: h5py.Group) -> None:
        nxdata(entry)["signal"] = h5py.ExternalLink(str(victim), "/entry/data/signal")

    nexus(root / "MA1234/ID21/steal_0001/steal_0001.nxs", stealing)
    nexus(root / "MA1234/ID21/plain_0001/plain_0001.nxs", lambda e: None)
    alice = CatalogueUser("alice", proposals=frozenset({"MA1234"}))

    catalogue = LocalCatalogue(data_root=str(root), index_path=str(tmp_path / "i.sqlite"))
    report = catalogue.index()
    assert report.skipped_files == ()  # a refused thumbnail never costs a dataset
    found = {d.pid.rsplit("/", 1)[1]: d for d in catalogue.datasets_for(alice)}
    assert found["steal_0001"].title == "steal_0001 title"  # metadata read as before
    assert catalogue.thumbnail(found["steal_0001"], alice) is None
    assert catalogue.thumbnail(found["plain_0001"], alice) is None
    kept = catalogue.thumbnail(found["map_0001"], alice)
    assert kept is not None and pixels(kept.data).shape == (32, 32, 3)
    tree = catalogue.nexus_tree(found["map_0001"], alice)
    assert [e.path for e in tree][:3] == ["/entry", "/entry/data", "/entry/data/signal"]
    assert tree[2].shape == (32, 32) and tree[2].dtype == "float64"
    stolen = [e for e in catalogue.nexus_tree(found["steal_0001"], alice) if "signal" in e.path]
    assert [e.kind for e in stolen] == ["link"]

    off = LocalCatalogue(
        data_root=str(root), index_path=str(tmp_path / "off.sqlite"), thumbnails=False
    )
    off.index()
    mine = off.get(found["map_0001"].pid, alice)
    assert off.thumbnail(mine, alice) is None and off.nexus_tree(mine, alice)


def test_reindexing_a_changed_file_replaces_its_thumbnail(tmp_path: Path) -> None:
    path = nexus(tmp_path / "MA1234/ID21/map_0001/map_0001.nxs", lambda e: nxdata(e, np.eye(16)))
    alice = CatalogueUser("alice", proposals=frozenset({"MA1234"}))
    catalogue = LocalCatalogue(data_root=str(tmp_path), index_path=str(tmp_path / "i.sqlite"))
    catalogue.index()
    (dataset,) = catalogue.datasets_for(alice)
    before = catalogue.thumbnail(dataset, alice)
    nexus(path, lambda e: nxdata(e, np.ones((8, 24))))
    later = time.time() + 10
    os.utime(path, (later, later))
    assert catalogue.index().updated == 1
    after = catalogue.thumbnail(dataset, alice)
    assert before is not None and after is not None
    assert pixels(after.data).shape == (8, 24, 3) != pixels(before.data).shape


# -- remote catalogues: SciCat's own thumbnails -------------------------------------------


def data_uri(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def test_scicat_datasets_show_their_attachments_thumbnail_and_nothing_else() -> None:
    from portal.catalogue.scicat import SciCatCatalogue
    from tests.support.catalogue_examples import ALICE, MATRIX, TRUST, scicat_server

    png = render_png()
    mine, shared, group, other = (
        MATRIX[k].pid for k in ("member", "shared", "group", "non-member")
    )
    server = scicat_server()
    server.attachments = [
        {"datasetId": mine, "thumbnail": data_uri("image/png", png), "caption": "map"},
        {"datasetId": shared, "thumbnail": data_uri("image/png", b"<script>1</script>")},
        {"datasetId": group, "thumbnail": data_uri("image/svg+xml", b"<svg onload=x>")},
        {"datasetId": other, "thumbnail": data_uri("image/png", png)},
    ]
    with server.running() as url:
        catalogue = SciCatCatalogue(url=url, trusted_writers=TRUST)
        readable = {d.pid: d for d in catalogue.datasets_for(ALICE)}
        assert "/" in mine and {mine, shared, group} <= set(readable)
        picture = catalogue.thumbnail(readable[mine], ALICE)
        assert picture is not None and picture.data == png
        assert picture.content_type == "image/png"
        assert catalogue.thumbnail(readable[shared], ALICE) is None  # says PNG, is not
        assert catalogue.thumbnail(readable[group], ALICE) is None  # SVG may hold script
        no_attachment = next(p for p in readable if p not in (mine, shared, group))
        assert catalogue.thumbnail(readable[no_attachment], ALICE) is None
        # SciCat's own check stands too: a record alice may not read answers 403, not a picture
        stranger = replace(readable[mine], pid=other)
        assert catalogue.thumbnail(stranger, ALICE) is None
    asked = [s.path for s in server.seen if s.path.endswith("/thumbnail")]
    assert f"/api/v3/datasets/{quote(mine, safe='')}/thumbnail" in asked


class _EndlessThumbnail(io.RawIOBase):
    """A hostile catalogue's answer: a JSON thumbnail that goes on for ``size`` bytes, made
    as it is read, so that only what the reader keeps counts in its memory."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.head = b'{"thumbnail": "data:image/png;base64,iVBORw0KGgo'

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        chunk = (self.head + b"A" * n)[:n]
        self.head = self.head[len(chunk) :]
        buffer[:n] = chunk
        self.left -= n
        return n


def test_a_huge_scicat_thumbnail_is_refused_while_it_is_read(monkeypatch) -> None:
    """What a catalogue's users upload must not fill the hub: a 200 MB "thumbnail" is cut
    off after the largest picture the portal keeps, and a RIFF file that is not WebP (it
    could be anything) is no picture either."""
    import tracemalloc

    import requests
    from urllib3 import HTTPResponse

    from portal.catalogue.http import HttpCatalogue
    from portal.catalogue.scicat import SciCatCatalogue
    from tests.support.catalogue_examples import ALICE, MATRIX, TRUST, scicat_server

    mine = MATRIX["member"].pid
    server = scicat_server()
    sent = HttpCatalogue.send

    def hostile(self, url: str, *args, **kwargs) -> requests.Response:
        if not url.endswith("/thumbnail"):
            return sent(self, url, *args, **kwargs)
        response = requests.Response()
        response.status_code, response.url = 200, url
        response.raw = HTTPResponse(
            body=_EndlessThumbnail(200 << 20), preload_content=False, status=200
        )
        return response

    riff = b"RIFF\x10\x00\x00\x00WAVE<html><script>alert(1)</script>"
    server.attachments = [{"datasetId": mine, "thumbnail": data_uri("image/webp", riff)}]
    with server.running() as url:
        catalogue = SciCatCatalogue(url=url, trusted_writers=TRUST)
        dataset = catalogue.get(mine, ALICE)
        assert catalogue.thumbnail(dataset, ALICE) is None  # RIFF, but not WebP
        monkeypatch.setattr(HttpCatalogue, "send", hostile)
        tracemalloc.start()
        try:
            assert catalogue.thumbnail(dataset, ALICE) is None
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 << 20, f"the hub held {peak >> 20} MB for one thumbnail"


def test_a_tree_too_big_to_send_costs_the_tree_not_the_dataset(tmp_path: Path) -> None:
    """Long non-ASCII names make a tree summary bigger than a worker's reply may be: the
    file keeps its metadata and thumbnail, and loses only its tree."""

    def big_tree(entry: h5py.Group) -> None:
        nxdata(entry, np.eye(16))
        group = entry
        for depth in range(3):
            group = group.create_group(chr(0x4E00 + depth) * 64)
            group.attrs["NX_class"] = "\u00e9" * 64
        for n in range(200):
            group.create_group(f"{n:03d}" + "\u00e9" * 61).attrs["NX_class"] = "\u00e9" * 64

    nexus(tmp_path / "MA1234/ID21/big_0001/big_0001.nxs", big_tree)
    alice = CatalogueUser("alice", proposals=frozenset({"MA1234"}))
    catalogue = LocalCatalogue(data_root=str(tmp_path), index_path=str(tmp_path / "i.sqlite"))
    report = catalogue.index()
    assert report.skipped_files == ()
    [dataset] = catalogue.datasets_for(alice)
    assert dataset.title == "big_0001 title"
    assert catalogue.thumbnail(dataset, alice) is not None
    assert not catalogue.nexus_tree(dataset, alice)


async def test_a_slow_catalogue_gets_at_most_a_few_thumbnail_requests_at_once() -> None:
    """A list page asks for 50 thumbnails; against a slow catalogue they must not take every
    worker thread the hub shares with spawns."""
    from portal.catalogue import CatalogueUser
    from portal.catalogue.model import Thumbnail
    from portal.handlers import THUMBNAIL_FETCHES, fetch_thumbnail

    busy, most = 0, 0

    class SlowCatalogue:  # the two calls the handler makes, each taking 50 ms
        def get(self, pid: str, user: CatalogueUser) -> str:
            nonlocal busy, most
            busy += 1
            most = max(most, busy)
            time.sleep(0.05)
            return pid

        def thumbnail(self, dataset: str, user: CatalogueUser) -> Thumbnail:
            nonlocal busy
            time.sleep(0.05)
            busy -= 1
            return Thumbnail(b"\x89PNG", "image/png")

    user = CatalogueUser("alice")
    pictures = await asyncio.gather(
        *(fetch_thumbnail(SlowCatalogue(), f"P/{n}", user) for n in range(50))
    )
    assert len(pictures) == 50 and all(p.content_type == "image/png" for p in pictures)
    assert most == THUMBNAIL_FETCHES < 6  # asyncio's default pool has 6 threads on 2 cores
