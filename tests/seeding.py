"""``stable_seed(*parts)``: a seed from a stable hash of a test's name and parameters (zlib's CRC-32 of their repr;
never Python's salted ``hash()`` of strings, never torch's per-process global generator, whose state depends on
the tests that ran before in the same process)."""

import zlib


def stable_seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())
