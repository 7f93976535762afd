"""One-time enrollment tokens: create, split, prove, verify."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from pki_builders import NOW
from shared.pki.tokens import (
    AUDIENCE,
    TokenError,
    create_token,
    prove,
    provisioner_id_of,
    split_token,
    verify_token,
)

TTL = timedelta(minutes=5)
MAX_TTL = timedelta(hours=1)
REQUEST_ID = "req-1"
CSR_DER = b"csr-der-bytes"


@pytest.fixture(scope="module")
def provisioner_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def token(provisioner_key: ed25519.Ed25519PrivateKey) -> str:
    return create_token(provisioner_key, "prov-1", ["www.example.internal", "api.example.internal"], NOW, TTL)


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _payload(token_jwt: str) -> dict[str, object]:
    return json.loads(_b64decode(token_jwt.split(".")[1]))


def _verify(token: str, key: ed25519.Ed25519PublicKey, **overrides: object):  # type: ignore[no-untyped-def]
    token_jwt, holder = split_token(token)
    args: dict[str, object] = {
        "token_jwt": token_jwt,
        "proof": prove(holder, REQUEST_ID, CSR_DER),
        "provisioner_key": key,
        "request_id": REQUEST_ID,
        "csr_der": CSR_DER,
        "now": NOW + timedelta(seconds=10),
        "max_ttl": MAX_TTL,
    }
    args.update(overrides)
    return verify_token(**args)  # type: ignore[arg-type]


def _signed(key: ed25519.Ed25519PrivateKey, holder: ed25519.Ed25519PrivateKey, **claims: object) -> str:
    """A JWT with the given claims over sensible defaults, signed by `key`."""
    holder_x = (
        base64.urlsafe_b64encode(
            holder.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        .rstrip(b"=")
        .decode()
    )
    body: dict[str, object] = {
        "iss": "prov-1",
        "aud": AUDIENCE,
        "sub": "www.example.internal",
        "jti": "tok-1",
        "iat": int(NOW.timestamp()),
        "exp": int((NOW + TTL).timestamp()),
        "sans": ["www.example.internal"],
        "cnf": {"kty": "OKP", "crv": "Ed25519", "x": holder_x},
    }
    body.update(claims)
    kid = str(body.pop("kid", "prov-1"))
    return jwt.encode(body, key, algorithm="EdDSA", headers={"kid": kid})


def refusal(token_jwt: str, holder: ed25519.Ed25519PrivateKey, provisioner_key: ed25519.Ed25519PrivateKey) -> str:
    """The reason code verify_token gives for a token proven by `holder` for the default request."""
    with pytest.raises(TokenError) as exc:
        verify_token(
            token_jwt,
            prove(holder, REQUEST_ID, CSR_DER),
            provisioner_key.public_key(),
            REQUEST_ID,
            CSR_DER,
            NOW,
            MAX_TTL,
        )
    return exc.value.code


def test_valid_token_verifies(token: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    claims = _verify(token, provisioner_key.public_key())
    assert claims.provisioner_id == "prov-1"
    assert claims.dns_names == ("www.example.internal", "api.example.internal")
    assert claims.profile == "tls-server"


def test_verified_claims_expire_at_now_plus_ttl(token: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    assert _verify(token, provisioner_key.public_key()).expires_at == NOW + TTL


def test_verified_claims_subject_defaults_to_first_name(token: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    assert _verify(token, provisioner_key.public_key()).subject == "www.example.internal"


def test_verified_claims_name_the_holder_key_of_the_printed_token(
    token: str, provisioner_key: ed25519.Ed25519PrivateKey
) -> None:
    _, holder = split_token(token)
    claims = _verify(token, provisioner_key.public_key())
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert claims.holder_key.public_bytes(*raw) == holder.public_key().public_bytes(*raw)


def test_each_token_has_a_fresh_id(provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    first = create_token(provisioner_key, "prov-1", ["a.example.internal"], NOW, TTL)
    second = create_token(provisioner_key, "prov-1", ["a.example.internal"], NOW, TTL)
    assert _payload(split_token(first)[0])["jti"] != _payload(split_token(second)[0])["jti"]


def test_create_token_refuses_no_names(provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    with pytest.raises(ValueError, match="at least one name"):
        create_token(provisioner_key, "prov-1", [], NOW, TTL)


def test_token_signed_by_another_provisioner_is_forged(token: str) -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(TokenError) as exc:
        _verify(token, other.public_key())
    assert exc.value.code == "token_forged"


def test_token_after_expiry_is_expired(token: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    with pytest.raises(TokenError) as exc:
        _verify(token, provisioner_key.public_key(), now=NOW + TTL + timedelta(seconds=1))
    assert exc.value.code == "token_expired"


def test_token_at_its_expiry_instant_is_expired(token: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    with pytest.raises(TokenError) as exc:
        _verify(token, provisioner_key.public_key(), now=NOW + TTL)
    assert exc.value.code == "token_expired"


def test_token_before_not_before_is_not_yet_valid(token: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    with pytest.raises(TokenError) as exc:
        _verify(token, provisioner_key.public_key(), now=NOW - timedelta(minutes=1))
    assert exc.value.code == "token_not_yet_valid"


def test_token_living_longer_than_max_ttl_is_refused(provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    long_lived = create_token(provisioner_key, "prov-1", ["www.example.internal"], NOW, timedelta(hours=2))
    with pytest.raises(TokenError) as exc:
        _verify(long_lived, provisioner_key.public_key())
    assert exc.value.code == "token_lifetime_too_long"


def test_token_living_exactly_max_ttl_verifies(provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    token = create_token(provisioner_key, "prov-1", ["www.example.internal"], NOW, MAX_TTL)
    assert _verify(token, provisioner_key.public_key()).token_id


def test_proof_for_another_request_id_is_invalid(token: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    _, holder = split_token(token)
    with pytest.raises(TokenError) as exc:
        _verify(token, provisioner_key.public_key(), proof=prove(holder, "req-2", CSR_DER))
    assert exc.value.code == "token_proof_invalid"


def test_proof_for_another_csr_is_invalid(token: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    _, holder = split_token(token)
    with pytest.raises(TokenError) as exc:
        _verify(token, provisioner_key.public_key(), proof=prove(holder, REQUEST_ID, b"another-csr"))
    assert exc.value.code == "token_proof_invalid"


def test_proof_by_another_holder_key_is_invalid(token: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    stranger = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(TokenError) as exc:
        _verify(token, provisioner_key.public_key(), proof=prove(stranger, REQUEST_ID, CSR_DER))
    assert exc.value.code == "token_proof_invalid"


def test_garbage_proof_is_invalid(token: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    with pytest.raises(TokenError) as exc:
        _verify(token, provisioner_key.public_key(), proof="not base64 at all!")
    assert exc.value.code == "token_proof_invalid"


@pytest.mark.parametrize(
    "printed",
    ["", "no-separator", "~" + "A" * 43, "header.body.sig~not-a-key", "header.body.sig~" + "A" * 10],
    ids=["empty", "no_separator", "no_jwt", "bad_key", "short_key"],
)
def test_split_token_refuses_malformed_strings(printed: str) -> None:
    with pytest.raises(TokenError) as exc:
        split_token(printed)
    assert exc.value.code == "token_malformed"


def test_split_token_ignores_surrounding_whitespace(token: str) -> None:
    assert split_token(f"  {token}\n")[0] == split_token(token)[0]


@pytest.mark.parametrize("token_jwt", ["", "garbage", "a.b.c"], ids=["empty", "one_part", "three_junk_parts"])
def test_verify_refuses_malformed_jwt(token_jwt: str, provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    with pytest.raises(TokenError) as exc:
        verify_token(token_jwt, "proof", provisioner_key.public_key(), REQUEST_ID, CSR_DER, NOW, MAX_TTL)
    assert exc.value.code == "token_malformed"


def test_verify_refuses_another_audience(provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    holder = ed25519.Ed25519PrivateKey.generate()
    token_jwt = _signed(provisioner_key, holder, aud="some-other-service")
    assert refusal(token_jwt, holder, provisioner_key) == "token_malformed"


def test_verify_refuses_token_without_holder_key(provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    holder = ed25519.Ed25519PrivateKey.generate()
    token_jwt = jwt.encode(
        {
            "iss": "prov-1",
            "aud": AUDIENCE,
            "jti": "t",
            "iat": int(NOW.timestamp()),
            "exp": int((NOW + TTL).timestamp()),
            "sans": ["www.example.internal"],
        },
        provisioner_key,
        algorithm="EdDSA",
        headers={"kid": "prov-1"},
    )
    assert refusal(token_jwt, holder, provisioner_key) == "token_malformed"


def test_verify_refuses_hmac_signed_token(provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    holder = ed25519.Ed25519PrivateKey.generate()
    genuine = _signed(provisioner_key, holder)
    secret = "a-guessable-shared-secret-of-32-bytes"
    hmac_token = jwt.encode(_payload(genuine), secret, algorithm="HS256", headers={"kid": "prov-1"})
    assert refusal(hmac_token, holder, provisioner_key) == "token_malformed"


def test_verify_refuses_issuer_other_than_signing_provisioner(provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    holder = ed25519.Ed25519PrivateKey.generate()
    token_jwt = _signed(provisioner_key, holder, kid="prov-1", iss="prov-2")
    assert provisioner_id_of(token_jwt) == "prov-1"
    refusal(token_jwt, holder, provisioner_key)  # raises if the token is accepted


def test_printed_jwt_carries_no_holder_private_key(token: str) -> None:
    token_jwt, holder = split_token(token)
    seed = holder.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    seed_b64 = base64.urlsafe_b64encode(seed).rstrip(b"=").decode()
    payload = _payload(token_jwt)
    assert seed_b64 not in token_jwt
    assert seed_b64 not in json.dumps(payload)
    assert seed not in _b64decode(token_jwt.split(".")[1])
    assert token.endswith("~" + seed_b64)


def test_printed_jwt_names_the_holder_public_key(token: str) -> None:
    token_jwt, holder = split_token(token)
    public = holder.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert _b64decode(_payload(token_jwt)["cnf"]["x"]) == public  # type: ignore[index]


def test_provisioner_id_of_reads_the_kid(token: str) -> None:
    assert provisioner_id_of(split_token(token)[0]) == "prov-1"


def test_provisioner_id_of_refuses_a_non_jwt() -> None:
    with pytest.raises(TokenError) as exc:
        provisioner_id_of("not-a-jwt")
    assert exc.value.code == "token_malformed"


def test_provisioner_id_of_refuses_a_jwt_without_kid(provisioner_key: ed25519.Ed25519PrivateKey) -> None:
    token_jwt = jwt.encode({"iss": "prov-1"}, provisioner_key, algorithm="EdDSA")
    with pytest.raises(TokenError) as exc:
        provisioner_id_of(token_jwt)
    assert exc.value.code == "token_malformed"


def _header_segment(header: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()


def test_provisioner_id_of_reads_a_padded_header_as_pyjwt_does() -> None:
    header = _header_segment({"alg": "EdDSA", "kid": "prov-1", "typ": "JWT"})
    assert len(header) % 4  # padded, the fast read declines it and PyJWT's reads it
    assert provisioner_id_of(f"{header}{'=' * (-len(header) % 4)}.e30.c2ln") == "prov-1"


@pytest.mark.parametrize("header", [["kid"], {"kid": 7}, {"kid": ""}, "prov-1"])
def test_provisioner_id_of_refuses_a_header_without_a_string_kid(header: object) -> None:
    with pytest.raises(TokenError) as exc:
        provisioner_id_of(f"{_header_segment(header)}.e30.c2ln")
    assert exc.value.code == "token_malformed"


@pytest.mark.parametrize("segment", ["e30!", "WyJraWQiXQ==", "%%%%", "a", "bm90IGpzb24"])
def test_provisioner_id_of_refuses_a_header_that_is_not_base64url_json(segment: str) -> None:
    with pytest.raises(TokenError) as exc:
        provisioner_id_of(f"{segment}.e30.c2ln")
    assert exc.value.code == "token_malformed"


def test_token_error_is_a_value_error_with_its_message() -> None:
    error = TokenError("token_expired", "ask for a new one")
    assert isinstance(error, ValueError)
    assert str(error) == "ask for a new one"
