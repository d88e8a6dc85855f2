"""Hostile bytes (issue 6, item 4): property tests of the validator.

test_validate.py already flips bits, truncates and overwrites bytes of two
signed responses.  Here the mutations know the structure: length fields
edited (with or without the enclosing lengths made consistent again), extra
SingleResponses, swapped or added certificates, unknown critical extensions,
and signatures by keys that have no right to sign; byte-level damage may
follow.  Two properties hold for every input:

* ``validate`` raises nothing but ValidationError;
* it never accepts a response unless the signature over its ResponseData
  verifies -- checked here independently with cryptography's primitives --
  with the issuer's key or the key of the one legitimate delegated responder
  whose certificate the response carries, over bytes that this test signed
  with that key.

For extensions the expectation is exact in both directions: refused exactly
when an unknown extension is critical in the response or in the matching
SingleResponse.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
from conftest import examples
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pki import CA, DAY, HOUR, Issued, assemble, ext, oid, parts, seq, tlv

from ocspstaple.certs import Pair
from ocspstaple.errors import ValidationError
from ocspstaple.validate import CertStatus, validate

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
SETTINGS = settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])


class World:
    """One CA and everything that might sign or be swapped in, made once.

    A plain class, not a dataclass: hypothesis prints dataclasses field by field.
    """

    def __init__(self, ca: CA, leaf: Issued, delegate: Issued, rogues: dict[str, Issued],
                 neighbours: list[Issued]) -> None:
        self.ca = ca
        self.leaf = leaf
        self.pair = Pair(cert=leaf.cert, issuer=ca.cert)
        self.delegate = delegate  # the only legitimate delegated responder
        self.rogues = rogues  # certificates whose keys must not sign for this CA
        self.neighbours = neighbours
        self.bases: dict[str, bytes] = {}  # validly signed starting points
        self.authorised: set[bytes] = set()  # every ResponseData signed here by an authorised key
        self.extra_singles: list[bytes] = []  # SingleResponses that are not about this certificate
        # hypothesis replays draws: the same input must give the same bytes
        self.signed: dict[tuple[bytes, int], bytes] = {}

    def __repr__(self) -> str:
        return f"World({self.ca.cert.subject.rfc4514_string()})"

    @property
    def authorised_keys(self) -> dict[str, object]:
        return {"issuer": self.ca.key, "delegate": self.delegate.key}

    def sign_tbs(self, tbs: bytes, key) -> bytes:
        """A signature over raw ResponseData bytes (memoised, as ``sign``)."""
        memo = (tbs, id(key))
        if memo not in self.signed:
            if isinstance(key, rsa.RSAPrivateKey):
                self.signed[memo] = key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
            else:
                self.signed[memo] = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
            if any(key is k for k in self.authorised_keys.values()):
                self.authorised.add(tbs)
        return self.signed[memo]

    def sign(self, p: dict, key) -> bytes:
        """Re-sign ``p`` with ``key``, remembering ResponseData signed by an authorised key."""
        memo = (repr(sorted(p.items())).encode(), id(key))
        if memo not in self.signed:
            self.signed[memo] = assemble(p, key)
        data = self.signed[memo]
        if any(key is k for k in self.authorised_keys.values()):
            self.authorised.add(ocsp.load_der_ocsp_response(data).tbs_response_bytes)
        return data


def make_world(key_kind: str) -> World:
    ca = CA.root(f"Properties {key_kind} Root", key_kind=key_kind, now=NOW)
    leaf = ca.issue("www.example.test")
    delegate = ca.delegate("OCSP Responder")
    impostor = CA.root(f"Properties {key_kind} Root", key_kind=key_kind, now=NOW)
    rogues = {
        "no EKU": ca.delegate("OCSP Responder", eku=False),  # same name as the real one
        "CA-flagged": ca.issue("OCSP Responder", is_ca=True, ocsp_urls=(), eku=[ExtendedKeyUsageOID.OCSP_SIGNING]),
        "other CA's delegate": impostor.delegate("OCSP Responder"),
        "impostor CA": Issued(cert=impostor.cert, key=impostor.key),
        "leaf": leaf,
        "expired delegate": ca.delegate("OCSP Responder", not_before=NOW - 30 * DAY, not_after=NOW - 2 * DAY),
    }
    neighbours = [ca.issue(f"n{i}.example.test") for i in range(3)]
    w = World(ca, leaf, delegate, rogues, neighbours)
    t = NOW - HOUR
    kw = dict(this_update=t, produced_at=t)
    for i, n in enumerate(neighbours):
        w.extra_singles.append(parts(ca.respond(n.cert, status=["good", "revoked", "unknown"][i], **kw))["singles"][0])
    # our serial, but the CertID of another issuer: must never count as ours
    w.extra_singles.append(parts(ca.respond(leaf.cert, issuer=impostor.cert, status="revoked", **kw))["singles"][0])
    w.bases = {
        "issuer by name": ca.respond(leaf.cert, **kw),
        "issuer by key": ca.respond(leaf.cert, by_key=True, **kw),
        "delegate": ca.respond(leaf.cert, signer=delegate, **kw),
        "delegate by key": ca.respond(leaf.cert, signer=delegate, by_key=True, **kw),
        "revoked": ca.respond(leaf.cert, status="revoked", **kw),
    }
    for data in w.bases.values():
        w.authorised.add(ocsp.load_der_ocsp_response(data).tbs_response_bytes)
    return w


@pytest.fixture(scope="module", params=["ec", "rsa"])
def world(request) -> World:
    return make_world(request.param)


# -- the independent oracle ------------------------------------------------------

def _verifies(key, sig: bytes, data: bytes, alg: hashes.HashAlgorithm | None) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and alg is not None:
            key.verify(sig, data, ec.ECDSA(alg))
        elif isinstance(key, rsa.RSAPublicKey) and alg is not None:
            key.verify(sig, data, padding.PKCS1v15(), alg)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def assert_properly_signed(w: World, data: bytes) -> None:
    """What an accepted response must be: signed, over bytes this test signed,
    by the issuer or by the legitimate delegate whose certificate it carries."""
    r = ocsp.load_der_ocsp_response(data)
    tbs, sig, alg = r.tbs_response_bytes, r.signature, r.signature_hash_algorithm
    assert tbs in w.authorised, "accepted ResponseData that no authorised key signed"
    by_issuer = _verifies(w.ca.cert.public_key(), sig, tbs, alg)
    by_delegate = w.delegate.cert in r.certificates and _verifies(w.delegate.cert.public_key(), sig, tbs, alg)
    assert by_issuer or by_delegate, "accepted a response whose signature does not verify with an authorised key"


def check(w: World, data: bytes) -> object | None:
    """Validate; only ValidationError may escape; an acceptance must be proper."""
    try:
        v = validate(data, pair=w.pair, now=NOW)
    except ValidationError:
        return None
    assert_properly_signed(w, data)
    return v


# -- DER surgery -------------------------------------------------------------------

@dataclass
class Node:
    tag: int
    content: bytes
    children: list[Node] | None
    length_override: bytes | None = None

    def encode(self) -> bytes:
        body = b"".join(c.encode() for c in self.children) if self.children is not None else self.content
        return bytes([self.tag]) + (self.length_override or _length(len(body))) + body


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def parse_tree(data: bytes) -> list[Node]:
    """A strict, test-side DER reader; OCTET STRINGs that hold whole DER (the
    BasicOCSPResponse) are opened too."""
    out, pos = [], 0
    while pos < len(data):
        tag, first = data[pos], data[pos + 1]
        if first < 0x80:
            n, hdr = first, 2
        else:
            k = first & 0x7F
            n, hdr = int.from_bytes(data[pos + 2:pos + 2 + k], "big"), 2 + k
        content = data[pos + hdr:pos + hdr + n]
        if len(content) != n:
            raise ValueError("truncated")
        children = None
        if tag & 0x20:
            children = parse_tree(content)
        elif tag == 0x04 and content[:1] == b"\x30":
            try:
                inner = parse_tree(content)
                if b"".join(c.encode() for c in inner) == content:
                    children = inner
            except (ValueError, IndexError):
                pass
        out.append(Node(tag, content, children))
        pos += hdr + n
    return out


def all_nodes(nodes: list[Node]) -> list[Node]:
    found = []
    for n in nodes:
        found.append(n)
        if n.children is not None:
            found.extend(all_nodes(n.children))
    return found


def length_variants(n: int) -> list[bytes]:
    """Wrong or non-DER encodings of a length ``n``."""
    out = [_length(max(n + d, 0)) for d in (-2, -1, 1, 2, 100)]
    out += [b"\x00", b"\x80", b"\xff", b"\x84\xff\xff\xff\xff", b"\x81" + bytes([n & 0xFF])]
    out.append(b"\x82" + n.to_bytes(2, "big"))  # long form where short or shorter would do
    out.append(b"\x85" + n.to_bytes(5, "big"))
    return [v for v in out if v != _length(n)]


# -- strategies ---------------------------------------------------------------------

@st.composite
def length_edit(draw, data: bytes) -> bytes:
    """One length field made wrong or non-DER; the enclosing lengths either made
    consistent with it again (only the inside is broken) or left as they were."""
    tree = parse_tree(data)
    node = draw(st.sampled_from(all_nodes(tree)))
    body_len = len(b"".join(c.encode() for c in node.children)) if node.children is not None else len(node.content)
    variant = draw(st.sampled_from(length_variants(body_len)))
    if draw(st.booleans()):
        node.length_override = variant
        return b"".join(n.encode() for n in tree)
    before = b"".join(n.encode() for n in tree)
    marker = node.encode()
    node.length_override = variant
    i = before.find(marker)
    return before[:i] + node.encode() + before[i + len(marker):]


# Universal tags a hostile encoder might put where another was expected.
TAGS = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0A, 0x0C, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B,
        0x1C, 0x1D, 0x1E, 0x30, 0x31,
        0x80, 0x81, 0x82, 0xA0, 0xA1, 0xA2]


@st.composite
def field_edit(draw, w: World, data: bytes) -> tuple[bytes, bool]:
    """One primitive field (a name's string, a time, a serial, an OID, the
    status...) gets another tag or other contents, every length kept right;
    then, drawn, the ResponseData is re-signed by the issuer so that only the
    edited field can be the reason for a refusal.  Returns (bytes, re-signed)."""
    tree = parse_tree(data)
    basic = tree[0].children[1].children[0].children[1].children[0]
    leaves = [n for n in all_nodes(basic.children[0].children) if n.children is None]
    node = draw(st.sampled_from(leaves))
    edit = draw(st.sampled_from(["tag", "content", "both"]))
    if edit in ("tag", "both"):
        node.tag = draw(st.sampled_from([t for t in TAGS if t != node.tag]))
    if edit in ("content", "both"):
        node.content = draw(st.one_of(
            st.binary(max_size=24),
            st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\x00", b"", b"99991399999999Z", b"2026112412Z",
                             b"\x80\x80\x80\x80\x80", b"\xed\xa0\x80"]),
        ))
    resign = draw(st.booleans())
    if resign:
        sig = w.sign_tbs(basic.children[0].encode(), w.ca.key)
        basic.children[2] = Node(0x03, b"\x00" + sig, None)
    return b"".join(n.encode() for n in tree), resign


def byte_damage(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["none", "none", "flip", "truncate", "insert"]))
    b = bytearray(data)
    if kind == "flip":
        b[draw(st.integers(0, len(b) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del b[draw(st.integers(0, len(b) - 1)):]
    elif kind == "insert":
        i = draw(st.integers(0, len(b)))
        b[i:i] = draw(st.binary(min_size=1, max_size=4))
    return bytes(b)


def signer_choice(w: World):
    keys = {**w.authorised_keys, **{name: r.key for name, r in w.rogues.items()}, "keep the old signature": None}
    return st.sampled_from(sorted(keys)).map(lambda name: (name, keys[name]))


def finish(draw, w: World, p: dict, original: bytes) -> bytes:
    """Re-sign ``p`` with a drawn key, or keep the original signature."""
    name, key = draw(signer_choice(w))
    if key is None:
        fields = parse_tree(original)[0].children[1].children[0].children[1].children[0].children
        sig_alg, sig = fields[1].encode(), fields[2].encode()
        tbs = seq(*p["version"], p["responder_id"], p["produced_at"], seq(*p["singles"]), *p["response_exts"])
        basic = seq(tbs, sig_alg, sig, *p["certs"])
        return seq(tlv(0x0A, b"\x00"), tlv(0xA0, seq(oid("1.3.6.1.5.5.7.48.1.1"), tlv(0x04, basic))))
    return w.sign(p, key)


def certs_field(*certs: x509.Certificate) -> list[bytes]:
    from cryptography.hazmat.primitives.serialization import Encoding

    if not certs:
        return []
    return [tlv(0xA0, seq(*[c.public_bytes(Encoding.DER) for c in certs]))]


@st.composite
def extra_singles(draw, w: World) -> tuple[bytes, bytes]:
    original = w.bases[draw(st.sampled_from(sorted(w.bases)))]
    p = parts(original)
    extra = draw(st.lists(st.sampled_from(w.extra_singles), min_size=1, max_size=4))
    singles = list(p["singles"])
    for s in extra:
        singles.insert(draw(st.integers(0, len(singles))), s)
    p["singles"] = singles
    return finish(draw, w, p, original), original


@st.composite
def swapped_certificates(draw, w: World) -> tuple[bytes, bytes]:
    original = w.bases[draw(st.sampled_from(sorted(w.bases)))]
    p = parts(original)
    pool = [w.delegate.cert, w.ca.cert, *[r.cert for r in w.rogues.values()]]
    chosen = draw(st.lists(st.sampled_from(pool), max_size=4))
    p["certs"] = certs_field(*chosen)
    if draw(st.booleans()):  # name another signer in the ResponderID
        who = draw(st.sampled_from(pool))
        by_key = draw(st.booleans())
        from ocspstaple.certs import key_bits, sha1

        p["responder_id"] = tlv(0xA2, tlv(0x04, sha1(key_bits(who)))) if by_key else \
            tlv(0xA1, who.subject.public_bytes())
    return finish(draw, w, p, original), original


UNKNOWN_OIDS = ["1.3.6.1.4.1.55555.1", "1.2.3.4", "2.5.29.99", "1.3.6.1.5.5.7.48.1.99"]


@st.composite
def extensions(draw, w: World) -> tuple[bytes, bool]:
    """A properly signed response with extensions added here and there;
    returns it and whether the spec demands a refusal."""
    base = draw(st.sampled_from(["issuer by name", "delegate", "revoked"]))
    p = parts(w.bases[base])
    neighbour = w.extra_singles[0]  # a good one, for another certificate
    p["singles"] = draw(st.permutations([p["singles"][0], neighbour]))
    ours = 0 if p["singles"][0] != neighbour else 1
    must_refuse = False
    response_exts: list[bytes] = []
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["response", "ours", "neighbour"]))
        known = draw(st.booleans())
        critical = draw(st.booleans())
        if known:  # a nonce (response) or a CRL reason-like known OID (single)
            e = ext("1.3.6.1.5.5.7.48.1.2", tlv(0x04, b"0123456789abcdef"), critical) if where == "response" \
                else ext("1.3.6.1.5.5.7.48.1.6", tlv(0x18, b"20261101000000Z"), critical)
        else:
            e = ext(draw(st.sampled_from(UNKNOWN_OIDS)), b"\x05\x00", critical)
        if where == "response":
            response_exts.append(e)
        else:
            i = ours if where == "ours" else 1 - ours
            p["singles"][i] = _add_single_ext(p["singles"][i], e)
        must_refuse |= critical and not known and where != "neighbour"
    if response_exts:
        p["response_exts"] = [tlv(0xA1, seq(*response_exts))]
    return w.sign(p, w.delegate.key if base == "delegate" else w.ca.key), must_refuse


def _add_single_ext(single: bytes, e: bytes) -> bytes:
    """``single`` with ``e`` appended to its [1] singleExtensions (the fields
    after certID, certStatus and thisUpdate: a revoked certStatus is [1] too)."""
    fields = parse_tree(single)[0].children
    head, tail = fields[:3], fields[3:]
    exts = [f for f in tail if f.tag == 0xA1]
    existing = [c.encode() for c in exts[0].children[0].children] if exts else []
    rest = [f.encode() for f in tail if f.tag != 0xA1]
    return seq(*[f.encode() for f in head], *rest, tlv(0xA1, seq(*existing, e)))


# -- the properties ---------------------------------------------------------------------

@SETTINGS
@given(data=st.data())
def test_length_field_edits(world: World, data):
    original = world.bases[data.draw(st.sampled_from(sorted(world.bases)))]
    mutated = data.draw(length_edit(original))
    mutated = byte_damage(data.draw, mutated)
    check(world, mutated)


@pytest.mark.filterwarnings("ignore::UserWarning")  # cryptography warns about an empty name attribute
@SETTINGS
@given(data=st.data())
def test_field_tag_and_value_edits(world: World, data):
    """Hostile contents in well-formed DER: strings with invalid UTF-8 or
    unknown string types in the ResponderID name, impossible times, empty
    serials and OIDs, a wrong status tag.  Parsed lazily by cryptography, these
    must still come out as ValidationError."""
    original = world.bases[data.draw(st.sampled_from(["issuer by name", "delegate", "revoked"]))]
    mutated, _ = data.draw(field_edit(world, original))
    check(world, mutated)


@SETTINGS
@given(data=st.data())
def test_extra_single_responses(world: World, data):
    mutated, original = data.draw(extra_singles(world))
    damaged = byte_damage(data.draw, mutated)
    v = check(world, damaged)
    if v is not None:
        # Only the SingleResponse for this certificate (serial AND issuer) counts.
        base = validate(original, pair=world.pair, now=NOW)
        assert (v.status, v.this_update) == (base.status, base.this_update)


@SETTINGS
@given(data=st.data())
def test_swapped_certificates_and_signers(world: World, data):
    mutated, _ = data.draw(swapped_certificates(world))
    check(world, byte_damage(data.draw, mutated))


@SETTINGS
@given(data=st.data())
def test_unknown_critical_extensions(world: World, data):
    mutated, must_refuse = data.draw(extensions(world))
    v = check(world, mutated)
    if must_refuse:
        assert v is None, "accepted an unknown critical extension"
    else:
        # The twin direction: known or non-critical extensions, or any on a
        # neighbour's SingleResponse, do not make a sound response unusable.
        assert v is not None and v.status in (CertStatus.GOOD, CertStatus.REVOKED)


def test_the_rogue_signers_are_really_refused(world: World):
    """Sanity of the pools above: each rogue, re-signing a sound response that
    names it and carries its certificate, is refused; the legitimate delegate
    and the issuer are accepted.  (Without this, the properties could pass
    because every re-signed response is broken for some other reason.)"""
    for name, rogue in world.rogues.items():
        p = parts(world.bases["delegate"])
        p["responder_id"] = tlv(0xA1, rogue.cert.subject.public_bytes())
        p["certs"] = certs_field(rogue.cert)
        assert check(world, assemble(p, rogue.key)) is None, name
    p = parts(world.bases["delegate"])
    assert check(world, world.sign(p, world.delegate.key)) is not None
    p = parts(world.bases["issuer by name"])
    assert check(world, world.sign(p, world.ca.key)) is not None
