"""pimail.rlpcodec against the ``rlp`` package (the independent reference, installed with the
test extra): same bytes out of encode, same objects or the same refusal out of decode."""

from __future__ import annotations

import pytest
import rlp
from hypothesis import given, settings
from hypothesis import strategies as st

from pimail.rlpcodec import MAX_DEPTH, RlpError, decode, encode

leaves = st.one_of(st.binary(max_size=80), st.integers(min_value=0, max_value=2**256), st.booleans())
trees = st.recursive(leaves, lambda kids: st.lists(kids, max_size=6), max_leaves=40)


@settings(max_examples=500, deadline=None)
@given(trees)
def test_encode_matches_rlp_package(obj: object) -> None:
    ours = encode(obj)
    assert ours == rlp.encode(obj)
    assert decode(ours) == rlp.decode(ours)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=120))
def test_decode_agrees_with_rlp_package_on_arbitrary_bytes(data: bytes) -> None:
    try:
        expected = rlp.decode(data, strict=True)
    except rlp.exceptions.DecodingError:
        with pytest.raises(RlpError):
            decode(data, strict=True)
    else:
        assert decode(data, strict=True) == expected
    # Without strict, the rlp package also returns a *truncated* string (b"\x82" -> b""); pimail
    # refuses it: an item must fit in what was received. Everything else agrees.
    try:
        ours = decode(data, strict=False)
    except RlpError as exc:
        try:
            rlp.decode(data, strict=False)
        except rlp.exceptions.DecodingError:
            pass
        else:
            assert "past the end" in str(exc) or "truncated" in str(exc)
    else:
        assert ours == rlp.decode(data, strict=False)


@pytest.mark.parametrize("bad", [
    b"\x81\x05",  # single byte below 0x80 with a string header
    b"\xb8\x05abcde",  # long form for a short string
    b"\xb9\x00\x40" + b"a" * 64,  # length with a leading zero
    b"\xc3\x01\x02",  # list runs past the end
    b"",  # nothing at all
])
def test_non_canonical_and_truncated_input_is_refused(bad: bytes) -> None:
    with pytest.raises(RlpError):
        decode(bad)


def test_trailing_bytes_only_allowed_when_not_strict() -> None:
    with pytest.raises(RlpError, match="trailing"):
        decode(b"\x01\x02")
    assert decode(b"\x01\x02", strict=False) == b"\x01"


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    deep = b"\xc0"
    for _ in range(MAX_DEPTH + 5):
        deep = bytes((0xC0 + len(deep),)) + deep if len(deep) <= 55 else rlp.encode([rlp.decode(deep)])
    with pytest.raises(RlpError, match="nested"):
        decode(deep)
    assert isinstance(decode(b"\xc1\xc0"), list)


def test_encode_refuses_what_rlp_cannot_carry() -> None:
    with pytest.raises(ValueError, match="negative"):
        encode(-1)
    with pytest.raises(TypeError):
        encode("text")
