"""JWT verification and minting (sans-I/O: the caller passes ``now``).

The algorithm allow-list is the server's (``AG_JWT_ALGORITHMS``), never the token's header, so
``alg: none`` and HS/RS key confusion are refused. ``exp`` and ``sub`` are required.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import Algorithm

from shared.config import ConfigError, Settings

__all__ = ["AuthFailure", "Identity", "TokenVerifier", "mint_token", "ROLES"]

LTI_CONTEXT = "https://purl.imsglobal.org/spec/lti/claim/context"
LTI_ROLES = "https://purl.imsglobal.org/spec/lti/claim/roles"
ROLES = ("learner", "instructor", "admin", "service")
_LTI_ROLE_SUFFIX = {"Learner": "learner", "Instructor": "instructor", "Administrator": "admin"}


class AuthFailure(Exception):
    """The token is missing, malformed, badly signed, expired or lacks a required claim.

    ``reason`` is for logs and metrics; ``message`` is what the client is told: precise about
    what to do (get a new token) without saying which check a forgery failed.
    """

    _MESSAGES = {
        "missing token": "a token is required",
        "expired": "token expired",
        "not yet valid": "token not yet valid",
    }

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.message = self._MESSAGES.get(reason, "invalid token")


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    name: str
    contexts: frozenset[str]
    roles: tuple[str, ...]
    expires_at: float

    def allows(self, context_id: str) -> bool:
        return context_id in self.contexts

    def has_role(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)


def _contexts(claims: dict[str, Any]) -> frozenset[str]:
    found: set[str] = set()
    one = claims.get("context_id")
    if isinstance(one, str) and one:
        found.add(one)
    many = claims.get("context_ids")
    if isinstance(many, list):
        found.update(c for c in many if isinstance(c, str) and c)
    lti = claims.get(LTI_CONTEXT)
    if isinstance(lti, dict) and isinstance(lti.get("id"), str) and lti["id"]:
        found.add(lti["id"])
    return frozenset(found)


def _roles(claims: dict[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    plain = claims.get("roles")
    if isinstance(plain, list):
        found.extend(r for r in plain if isinstance(r, str) and r in ROLES)
    lti = claims.get(LTI_ROLES)
    if isinstance(lti, list):
        for uri in lti:
            if isinstance(uri, str) and "#" in uri:
                role = _LTI_ROLE_SUFFIX.get(uri.rsplit("#", 1)[1])
                if role:
                    found.append(role)
    return tuple(dict.fromkeys(found)) or ("learner",)


class _PreparedKey(Algorithm):
    """An allowed algorithm with the server's key prepared once.

    PyJWT prepares the key on every decode: an HMAC secret is checked not to be a PEM, SSH, DER
    or JSON key, a public key is parsed from its PEM. That was most of a token check's cost
    (py-spy: ~7% of the gateway's CPU while sockets opened). Any other key is prepared as
    PyJWT would.
    """

    def __init__(self, inner: Algorithm, key: str | bytes) -> None:
        self._inner = inner
        self._key = key
        self._prepared = inner.prepare_key(key)

    def prepare_key(self, key: Any) -> Any:
        return self._prepared if key is self._key else self._inner.prepare_key(key)

    def check_key_length(self, key: Any) -> str | None:
        return self._inner.check_key_length(key)

    def sign(self, msg: bytes, key: Any) -> bytes:
        return self._inner.sign(msg, key)

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        return self._inner.verify(msg, key, sig)

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError("verification only")

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError("verification only")


def _decoder(algorithms: list[str], key: str | bytes) -> jwt.PyJWT:
    """A PyJWT that knows only the allowed algorithms, each with the key prepared once."""
    decoder = jwt.PyJWT()
    jws = getattr(decoder, "_jws", None)
    if not isinstance(jws, jwt.PyJWS):  # another PyJWT inside: its own (slower) path is right
        return decoder
    jws = jwt.PyJWS(algorithms=algorithms, options=jws.options)
    for name in algorithms:
        try:
            prepared = _PreparedKey(jws.get_algorithm_by_name(name), key)
        except (jwt.PyJWTError, ValueError) as exc:
            raise ConfigError(f"the JWT key cannot serve {name}: {exc}") from None
        jws.unregister_algorithm(name)
        jws.register_algorithm(name, prepared)
    decoder._jws = jws
    return decoder


class TokenVerifier:
    """Verifies tokens against the configured key and allow-list."""

    def __init__(self, settings: Settings) -> None:
        self.algorithms = list(settings.jwt_algorithms)
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.leeway = settings.jwt_leeway_s
        asymmetric = [a for a in self.algorithms if not a.startswith("HS")]
        symmetric = [a for a in self.algorithms if a.startswith("HS")]
        if asymmetric and symmetric:
            # One key cannot serve both families; mixing them invites key-confusion bugs.
            raise ConfigError("AG_JWT_ALGORITHMS must not mix HS* with RS*/ES* algorithms")
        if asymmetric:
            if settings.jwt_public_key is None:
                raise ConfigError("AG_JWT_PUBLIC_KEY is required for RS*/ES* algorithms")
            try:
                self.key: str | bytes = Path(settings.jwt_public_key).read_bytes()
            except OSError as exc:
                raise ConfigError(f"AG_JWT_PUBLIC_KEY cannot be read: {exc}") from None
        else:
            if not settings.jwt_secret:
                raise ConfigError("AG_JWT_SECRET is required for HS* algorithms")
            self.key = settings.jwt_secret
        self._jwt = _decoder(self.algorithms, self.key)

    def verify(self, token: str, now: float) -> Identity:
        if not isinstance(token, str) or not token:
            raise AuthFailure("missing token")
        options: dict[str, Any] = {
            "require": ["exp", "sub"],
            "verify_exp": False,  # checked below against the caller's clock
            "verify_iat": False,
            "verify_nbf": False,
            "verify_aud": self.audience is not None,
            "verify_iss": self.issuer is not None,
        }
        try:
            claims = self._jwt.decode(
                token,
                self.key,
                algorithms=self.algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.PyJWTError as exc:  # InvalidTokenError, or a key PyJWT would not use
            raise AuthFailure(type(exc).__name__) from None
        exp = claims.get("exp")
        sub = claims.get("sub")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise AuthFailure("exp is not a number")
        if not isinstance(sub, str) or not sub:
            raise AuthFailure("sub is not a string")
        if now >= exp + self.leeway:
            raise AuthFailure("expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and now + self.leeway < nbf:
            raise AuthFailure("not yet valid")
        name = claims.get("name")
        return Identity(
            user_id=sub,
            name=name if isinstance(name, str) and name else sub,
            contexts=_contexts(claims),
            roles=_roles(claims),
            expires_at=float(exp) + self.leeway,
        )


def mint_token(
    settings: Settings,
    *,
    sub: str,
    now: float,
    name: str | None = None,
    contexts: list[str] | tuple[str, ...] = (),
    roles: list[str] | tuple[str, ...] = ("learner",),
    ttl: float = 3600,
    private_key: str | None = None,
    algorithm: str | None = None,
) -> str:
    """Mint a dev token. HS256 with ``AG_JWT_SECRET`` unless a private key is given."""
    claims: dict[str, Any] = {
        "sub": sub,
        "iat": int(now),
        "exp": int(now + ttl),
        "jti": secrets.token_hex(8),
        "roles": list(roles),
    }
    if name:
        claims["name"] = name
    if len(contexts) == 1:
        claims["context_id"] = contexts[0]
    elif contexts:
        claims["context_ids"] = list(contexts)
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if private_key is not None:
        return jwt.encode(claims, private_key, algorithm=algorithm or "RS256")
    if not settings.jwt_secret:
        raise ConfigError("AG_JWT_SECRET is not set (run `atomic-guide up` once to generate one)")
    return jwt.encode(claims, settings.jwt_secret, algorithm=algorithm or "HS256")
