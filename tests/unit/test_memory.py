"""glibc malloc tuning: the calls are accepted here (glibc), and harmless when repeated."""

from __future__ import annotations

from l3hostd import memory


def test_tune_and_trim_work_on_glibc() -> None:
    assert memory._LIBC is not None, "this machine runs glibc"
    assert memory.tune() is True
    assert memory.tune() is True
    blob = [bytearray(200_000) for _ in range(50)]  # > the mmap threshold: mmapped
    del blob
    assert isinstance(memory.trim(), bool)
