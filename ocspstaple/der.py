"""A minimal strict DER reader for the few fields cryptography does not expose.

cryptography parses OCSP responses and certificates; this module only walks
structures that it has already accepted, to reach the raw issuer name, the
issuer key's BIT STRING (RFC 6960 4.1.1 hashes exactly these), RSASSA-PSS
parameters and per-SingleResponse extensions.
"""
from __future__ import annotations

from dataclasses import dataclass

from ocspstaple.errors import ValidationError

SEQUENCE = 0x30
BIT_STRING = 0x03
INTEGER = 0x02
OID = 0x06
BOOLEAN = 0x01
OCTET_STRING = 0x04


@dataclass(frozen=True)
class TLV:
    tag: int
    value: bytes
    raw: bytes  # the whole encoding, tag and length included

    def children(self) -> list[TLV]:
        """The elements of a constructed value."""
        if not self.tag & 0x20:
            raise ValidationError("DER: expected a constructed value")
        return read_all(self.value)


def read_one(data: bytes, pos: int = 0) -> tuple[TLV, int]:
    """Read one TLV at ``pos``; return it and the position after it."""
    try:
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise ValidationError("DER: multi-byte tags are not used in OCSP")
        first = data[pos + 1]
        hdr = 2
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0 or n > 4:
                raise ValidationError("DER: bad length")
            length = int.from_bytes(data[pos + 2:pos + 2 + n], "big")
            hdr += n
        end = pos + hdr + length
        if end > len(data):
            raise ValidationError("DER: truncated")
    except IndexError:
        raise ValidationError("DER: truncated") from None
    return TLV(tag, data[pos + hdr:end], data[pos:end]), end


def read_all(data: bytes) -> list[TLV]:
    """Read consecutive TLVs filling ``data`` exactly."""
    out = []
    pos = 0
    while pos < len(data):
        tlv, pos = read_one(data, pos)
        out.append(tlv)
    return out


def decode_oid(value: bytes) -> str:
    """Dotted string of an OBJECT IDENTIFIER's contents."""
    if not value:
        raise ValidationError("DER: empty OID")
    arcs: list[int] = []
    n = 0
    for b in value:
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(n)
            n = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def spki_key_bits(spki: bytes) -> bytes:
    """The subjectPublicKey BIT STRING contents (without the unused-bits byte)."""
    seq, _ = read_one(spki)
    bits = seq.children()[1]
    if bits.tag != BIT_STRING or not bits.value:
        raise ValidationError("DER: bad SubjectPublicKeyInfo")
    return bits.value[1:]


def tbs_subject(tbs_certificate: bytes) -> bytes:
    """The raw DER of the subject Name inside a TBSCertificate."""
    fields = read_one(tbs_certificate)[0].children()
    if fields[0].tag == 0xA0:  # [0] version
        fields = fields[1:]
    # serialNumber, signature, issuer, validity, subject
    return fields[4].raw
