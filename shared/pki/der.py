"""A minimal DER reader for the parts of a TBSCertificate, to compare certificates byte for byte
without building Python objects for every field (cryptography's name parsing alone costs ~60 us)."""

from __future__ import annotations

from dataclasses import dataclass


def tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end) of the DER element at `at`; ValueError if it overruns."""
    if at + 2 > len(data):
        raise ValueError("truncated DER element")
    tag, length = data[at], data[at + 1]
    start = at + 2
    if length & 0x80:
        width = length & 0x7F
        if width == 0 or width > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[start : start + width], "big")
        start += width
    end = start + length
    if end > len(data):
        raise ValueError("DER element overruns its container")
    return tag, start, end


def children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The elements inside [start, end): (tag, element start, content start, end) each."""
    found, at = [], start
    while at < end:
        tag, content, stop = tlv(data, at)
        found.append((tag, at, content, stop))
        at = stop
    if at != end:
        raise ValueError("DER elements overrun their container")
    return found


@dataclass(frozen=True)
class Extension:
    """One extension's OID (DER content), criticality and value (the OCTET STRING's content)."""

    oid: bytes
    critical: bool
    value: bytes


@dataclass(frozen=True)
class TbsParts:
    """The raw DER of each field of a TBSCertificate."""

    version: bytes
    serial: bytes
    signature: bytes
    issuer: bytes
    validity: bytes
    subject: bytes
    spki: bytes
    unique_ids: bytes
    extensions: tuple[Extension, ...]


def tbs_parts(tbs: bytes) -> TbsParts:
    """Split a DER TBSCertificate (RFC 5280 4.1) into its fields; ValueError if it is not one."""
    tag, start, end = tlv(tbs, 0)
    if tag != 0x30:
        raise ValueError("a TBSCertificate is a SEQUENCE")
    fields = children(tbs, start, end)
    if len(fields) < 7 or fields[0][0] != 0xA0:
        raise ValueError("not a v3 TBSCertificate")
    raw = [tbs[f[1] : f[3]] for f in fields]
    extensions: list[Extension] = []
    unique_ids = b""
    for ftag, begin, content, stop in fields[7:]:
        if ftag != 0xA3:
            unique_ids += tbs[begin:stop]  # issuer/subject unique ids (never in what Certbus signs)
            continue
        _, seq_start, seq_end = tlv(tbs, content)
        for _, _, ext_start, ext_end in children(tbs, seq_start, seq_end):
            parts = children(tbs, ext_start, ext_end)
            oid = tbs[parts[0][2] : parts[0][3]]
            critical = len(parts) == 3 and tbs[parts[1][2] : parts[1][3]] == b"\xff"
            value = tbs[parts[-1][2] : parts[-1][3]]
            extensions.append(Extension(oid, critical, value))
    return TbsParts(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], unique_ids, tuple(extensions))
