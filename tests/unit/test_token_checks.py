from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.auth import AuthFailure, TokenVerifier, mint_token
from shared.config import ConfigError, load_settings

SECRET = "s" * 64  # long enough for HS512 too (RFC 7518 §3.2)
NOW = 1_800_000_000.0


def verifier(**env: str) -> TokenVerifier:
    return TokenVerifier(load_settings({"AG_JWT_SECRET": SECRET, **env}))


def enc(claims: dict, key: str = SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def test_valid_token_yields_identity_with_contexts_roles_and_name_fallback() -> None:
    ident = verifier().verify(
        enc({"sub": "u1", "exp": NOW + 60, "context_ids": ["a", "b"], "roles": ["instructor"]}),
        NOW,
    )
    assert ident.user_id == "u1" and ident.name == "u1"
    assert ident.contexts == {"a", "b"} and ident.roles == ("instructor",)
    assert ident.allows("a") and not ident.allows("c")


def test_missing_roles_mean_learner_and_unknown_roles_are_ignored() -> None:
    ident = verifier().verify(enc({"sub": "u", "exp": NOW + 60, "roles": ["root"]}), NOW)
    assert ident.roles == ("learner",)


def test_lti_context_and_role_claims_are_read() -> None:
    ident = verifier().verify(
        enc(
            {
                "sub": "u",
                "exp": NOW + 60,
                "https://purl.imsglobal.org/spec/lti/claim/context": {"id": "lti-ctx"},
                "https://purl.imsglobal.org/spec/lti/claim/roles": [
                    "http://purl.imsglobal.org/vocab/lis/v2/institution/person#Administrator",
                    "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner",
                ],
            }
        ),
        NOW,
    )
    assert ident.contexts == {"lti-ctx"} and ident.roles == ("admin", "learner")


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "u"}, "MissingRequiredClaimError"),
        ({"exp": NOW + 60}, "MissingRequiredClaimError"),
        ({"sub": "u", "exp": NOW}, "expired"),
        ({"sub": "u", "exp": "tomorrow"}, "exp is not a number"),
        ({"sub": 5, "exp": NOW + 60}, "Subject"),
        ({"sub": "u", "exp": NOW + 60, "nbf": NOW + 30}, "not yet valid"),
    ],
)
def test_required_claims_and_times_are_checked_against_the_given_now(
    claims: dict, reason: str
) -> None:
    with pytest.raises(AuthFailure) as info:
        verifier().verify(enc(claims), NOW)
    assert reason in info.value.reason


def test_leeway_extends_expiry() -> None:
    token = enc({"sub": "u", "exp": NOW - 5})
    assert verifier(AG_JWT_LEEWAY_S="10").verify(token, NOW).expires_at == NOW + 5


def test_algorithm_allow_list_is_the_servers_not_the_tokens() -> None:
    none_token = jwt.encode({"sub": "u", "exp": NOW + 60}, None, algorithm="none")
    hs512 = enc({"sub": "u", "exp": NOW + 60}, alg="HS512")
    for tok in (none_token, hs512):
        with pytest.raises(AuthFailure):
            verifier().verify(tok, NOW)


def test_issuer_and_audience_are_checked_when_configured() -> None:
    v = verifier(AG_JWT_ISSUER="https://lms", AG_JWT_AUDIENCE="atomic")
    good = enc({"sub": "u", "exp": NOW + 60, "iss": "https://lms", "aud": "atomic"})
    assert v.verify(good, NOW).user_id == "u"
    for claims in (
        {"iss": "https://evil", "aud": "atomic"},
        {"iss": "https://lms", "aud": "x"},
        {},
    ):
        with pytest.raises(AuthFailure):
            v.verify(enc({"sub": "u", "exp": NOW + 60, **claims}), NOW)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_asymmetric_tokens_verify_with_the_configured_public_key(tmp_path: Path, alg: str) -> None:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    pub = tmp_path / "pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = load_settings({"AG_JWT_ALGORITHMS": alg, "AG_JWT_PUBLIC_KEY": str(pub)})
    v = TokenVerifier(settings)
    tok = mint_token(settings, sub="u", contexts=["c"], now=NOW, private_key=pem, algorithm=alg)
    assert v.verify(tok, NOW).allows("c")
    # key confusion: an HS256 token whose HMAC key is the public key PEM itself is refused
    forged = _hs256_with_raw_key({"sub": "u", "exp": NOW + 60, "context_id": "c"}, pub.read_bytes())
    with pytest.raises(AuthFailure):
        v.verify(forged, NOW)


def _hs256_with_raw_key(claims: dict, key: bytes) -> str:
    """PyJWT refuses to HMAC with a PEM key, so build the token by hand as an attacker would."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    sig = b64(hmac.new(key, signing, hashlib.sha256).digest())
    return (signing + b"." + sig).decode()


def test_mixing_symmetric_and_asymmetric_algorithms_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        verifier(AG_JWT_ALGORITHMS="HS256,RS256")


def test_minted_dev_token_round_trips() -> None:
    settings = load_settings({"AG_JWT_SECRET": SECRET})
    tok = mint_token(
        settings, sub="a", name="A", contexts=["c1", "c2"], roles=["admin"], ttl=60, now=time.time()
    )
    ident = TokenVerifier(settings).verify(tok, time.time())
    assert ident.name == "A" and ident.contexts == {"c1", "c2"} and ident.roles == ("admin",)


def test_the_key_is_prepared_once_and_every_signature_is_still_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from jwt.algorithms import HMACAlgorithm

    tokens = [enc({"sub": f"u{i}", "exp": NOW + 60}) for i in range(3)]
    other = enc({"sub": "u", "exp": NOW + 60}, key="o" * 64)
    head, body, sig = enc({"sub": "u", "exp": NOW + 60}).split(".")
    forged_body = enc({"sub": "admin", "exp": NOW + 60}).split(".")[1]
    calls: list[object] = []
    real = HMACAlgorithm.prepare_key
    monkeypatch.setattr(
        HMACAlgorithm, "prepare_key", lambda self, key: calls.append(key) or real(self, key)
    )
    v = verifier()
    for i, tok in enumerate(tokens):
        assert v.verify(tok, NOW).user_id == f"u{i}"
    assert len(calls) == 1
    for bad in (other, f"{head}.{forged_body}.{sig}", f"{head}.{body}.{sig[:-4]}AAAA"):
        with pytest.raises(AuthFailure):
            v.verify(bad, NOW)


def test_an_allowed_algorithm_the_key_cannot_serve_is_a_config_error(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = tmp_path / "pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match="ES256"):
        TokenVerifier(
            load_settings({"AG_JWT_ALGORITHMS": "RS256,ES256", "AG_JWT_PUBLIC_KEY": str(pub)})
        )
    with pytest.raises(ConfigError, match="HS256"):  # a PEM is no HMAC secret
        verifier(AG_JWT_SECRET=pub.read_text())
