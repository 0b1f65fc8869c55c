"""Streaming decompression (:mod:`hashserver.compression`): bounded pieces, concatenated
frames and members, garbage and truncation."""

from __future__ import annotations

import gzip
import os
import tracemalloc

import pytest

from hashserver.compression import DECODED_PIECE, GZIP, ZSTD, Decoder, InvalidPayload, zstd

COMPRESS = {"zstd": (ZSTD, zstd.compress), "gzip": (GZIP, gzip.compress)}
TEXT = b"".join(b"line %d of a buffer\n" % i for i in range(200_000)) + os.urandom(300_000)


def decode(encoding, stream: bytes, step: int) -> list[bytes]:
    decoder = Decoder(encoding)
    pieces = [piece for start in range(0, len(stream), step) for piece in decoder.feed(stream[start:start + step])]
    pieces.append(decoder.finish())
    assert decoder.length == sum(map(len, pieces))
    return pieces


@pytest.mark.parametrize("name", COMPRESS)
@pytest.mark.parametrize("step", [1 << 20, 65536, 4099])
def test_decodes_in_pieces_of_at_most_the_bound(name, step):
    encoding, compress = COMPRESS[name]
    pieces = decode(encoding, compress(TEXT), step)
    assert b"".join(pieces) == TEXT
    assert max(map(len, pieces)) <= DECODED_PIECE


@pytest.mark.parametrize("name", COMPRESS)
def test_a_body_that_expands_enormously_is_decoded_piece_by_piece(name):
    """256 MiB of zeros compress to some KiB (zstd) or 256 KiB (gzip); decoding them never
    holds more than a piece or two (traced: one piece is 1 MiB, the whole 256 MiB)."""
    encoding, compress = COMPRESS[name]
    size = 256 << 20
    bomb = compress(bytes(size))
    assert len(bomb) < size // 500
    decoder = Decoder(encoding)
    tracemalloc.start()
    try:
        total = 0
        for piece in decoder.feed(bomb):
            total += len(piece)
            assert len(piece) <= DECODED_PIECE
        total += len(decoder.finish())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == size == decoder.length
    assert peak < 4 * DECODED_PIECE, f"decoding held {peak} bytes at once"


@pytest.mark.parametrize("name", COMPRESS)
def test_concatenated_frames_decode_one_after_the_other(name):
    """As ``pzstd`` writes them and ``zstd -d``/``gunzip`` read them; fed whole, or split
    anywhere (here inside the second frame, and at the seam)."""
    encoding, compress = COMPRESS[name]
    first, second = compress(b"first part, "), compress(TEXT)
    stream = first + second
    for step in (len(stream), len(first), len(first) + 7, 3):
        assert b"".join(decode(encoding, stream, step)) == b"first part, " + TEXT


@pytest.mark.parametrize("name", COMPRESS)
def test_garbage_after_a_frame_does_not_decode(name):
    encoding, compress = COMPRESS[name]
    stream = compress(b"content") + b"not compressed at all"
    for step in (len(stream), 5):
        with pytest.raises(InvalidPayload):
            decode(encoding, stream, step)


@pytest.mark.parametrize("name", COMPRESS)
@pytest.mark.parametrize("cut", [1, 10, 1000])
def test_a_stream_cut_short_does_not_decode(name, cut):
    encoding, compress = COMPRESS[name]
    with pytest.raises(InvalidPayload, match="truncated"):
        decode(encoding, compress(TEXT)[:-cut], 65536)


@pytest.mark.parametrize("name", COMPRESS)
def test_nothing_at_all_is_truncated(name):
    with pytest.raises(InvalidPayload, match="truncated"):
        decode(COMPRESS[name][0], b"", 1)


@pytest.mark.parametrize("name", COMPRESS)
def test_garbage_does_not_decode(name):
    with pytest.raises(InvalidPayload):
        decode(COMPRESS[name][0], b"\x00garbage" * 100, 65536)


def test_zeros_after_a_gzip_member_are_skipped():
    """As ``gzip -d`` and Python's gzip module do (tar and dd pad so); zstd has no padding:
    ``zstd -d`` refuses the same zeros."""
    member = gzip.compress(b"padded")
    for stream in (member + bytes(100), member + bytes(100) + gzip.compress(b", then more")):
        for step in (len(stream), 7):
            assert b"".join(decode(GZIP, stream, step)) == gzip.decompress(stream)
    with pytest.raises(InvalidPayload):
        decode(ZSTD, zstd.compress(b"padded") + bytes(100), 65536)
