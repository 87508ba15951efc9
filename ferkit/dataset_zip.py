"""Reading a dataset's zip members within limits: every failure is a :class:`DatasetError` naming the member.

Members are judged by the uncompressed size the zip directory declares, which
the readers never inflate past, so a member's memory is bounded however well
it compresses; never by compression ratio (uniform faces, and CSVs of them,
legitimately compress 1000:1).
"""

from __future__ import annotations

import mmap
import struct
import zipfile
import zlib
from typing import BinaryIO

from ferkit.errors import DatasetError

#: What reading a damaged, truncated or unsupported zip member can raise; each caller turns it into a DatasetError.
ZIP_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError)


def check_member(info: zipfile.ZipInfo, max_bytes: int, where: str | None = None) -> None:
    """Refuse a zip member before reading it: encrypted, or larger than ``max_bytes`` uncompressed.

    The uncompressed size is the zip directory's, which the readers never
    inflate past, so it bounds the memory a member can take however well it
    compresses. ``where`` names the member in messages (default: its name).
    """
    where = where or info.filename
    if info.flag_bits & 0x1:
        raise DatasetError(f"{where}: encrypted zip member; FER-2013 archives are not encrypted: "
                           "extract it with its password and give the folder")
    if info.file_size > max_bytes:
        raise DatasetError(f"{where}: {info.file_size / 2**20:.0f} MiB uncompressed, over the limit of "
                           f"{max_bytes / 2**20:.0f} MiB for this kind of member; not read")


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """A zip member's bytes, within the limits of :func:`check_member`; every failure is a DatasetError naming it."""
    check_member(info, max_bytes)
    try:
        with archive.open(info) as member:
            data = member.read(max_bytes + 1)
    except ZIP_READ_ERRORS as error:
        raise DatasetError(f"{info.filename}: corrupt or unreadable zip member ({error})") from None
    if len(data) > max_bytes:
        raise DatasetError(f"{info.filename}: larger than its header says, over {max_bytes / 2**20:.0f} MiB; not read")
    return data


class ZipMembers:
    """Reads members of at most ``max_bytes`` straight from a memory map of the archive.

    ``ZipFile.read`` costs ~20 us of Python per call, which for 35,887 tiny
    JPEGs is most of the load time; slicing the mapped file and inflating with
    zlib (CRC still checked) is ~6x faster. Other compressions and encrypted
    members go through ``ZipFile.read``.
    """

    def __init__(self, archive: zipfile.ZipFile, raw: BinaryIO, max_bytes: int) -> None:
        self.archive = archive
        self.max_bytes = max_bytes
        self.buffer = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ)

    def read(self, info: zipfile.ZipInfo) -> bytes:
        check_member(info, self.max_bytes)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            return read_member(self.archive, info, self.max_bytes)
        offset = info.header_offset
        if self.buffer[offset:offset + 4] != b"PK\x03\x04":
            raise DatasetError(f"{info.filename}: corrupt zip entry (bad local header)")
        name_length, extra_length = struct.unpack_from("<HH", self.buffer, offset + 26)
        start = offset + 30 + name_length + extra_length
        stored = self.buffer[start:start + info.compress_size]
        try:
            # Never inflate past the declared size: a lying header cannot make this allocate more.
            data = zlib.decompressobj(-15).decompress(stored, info.file_size + 1) \
                if info.compress_type == zipfile.ZIP_DEFLATED else stored
        except zlib.error as error:
            raise DatasetError(f"{info.filename}: corrupt zip entry ({error})") from error
        if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
            raise DatasetError(f"{info.filename}: corrupt zip entry (CRC mismatch)")
        return data
