"""What a JWT issuer is trusted for: its algorithms, its key, its claim names and defaults.

Value objects only, validated when built: a settings loader maps its YAML onto
them, and `JWTVerifier` reads them. Two rules make algorithm confusion
impossible by construction: `none` is never allowed, and one issuer is either
HMAC-only (a shared secret) or asymmetric-only (a PEM public key or a JWKS URL),
so a public key can never be used as an HMAC secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from gateway.principal import Limits

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_CURVES) | frozenset({"EdDSA"})
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_SECRET_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_RSA_BITS = 2048

PublicKey = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


def key_fits(algorithm: str, key: object) -> bool:
    """Whether a public KEY may verify ALGORITHM (family, EC curve, RSA size)."""
    if algorithm in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    if algorithm in EC_CURVES:
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(
            key.curve, EC_CURVES[algorithm]
        )
    if algorithm == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey)
    return False


def load_public_key(pem: str, algorithms: tuple[str, ...]) -> PublicKey:
    """Parse a PEM public key and check it fits at least one of ALGORITHMS."""
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("public_key_pem is not a PEM public key") from exc
    if not isinstance(
        key,
        rsa.RSAPublicKey
        | ec.EllipticCurvePublicKey
        | ed25519.Ed25519PublicKey
        | ed448.Ed448PublicKey,
    ):
        raise ValueError(f"public_key_pem: unsupported key type {type(key).__name__}")
    if not any(key_fits(alg, key) for alg in algorithms):
        raise ValueError(
            f"public_key_pem does not fit algorithms {list(algorithms)} "
            f"(wrong key type or curve, or RSA below {MIN_RSA_BITS} bits)"
        )
    return key


@dataclass(frozen=True, slots=True)
class ClaimNames:
    """Which claim carries each part of the principal."""

    subject: str = "sub"
    tenant: str = "tenant"
    models: str = "models"
    requests_per_minute: str = "rpm"
    tokens_per_minute: str = "tpm"
    concurrent_requests: str = "concurrency"
    max_tokens: str = "max_tokens"

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if not getattr(self, name):
                raise ValueError(f"claim name for {name!r} must not be empty")


@dataclass(frozen=True, slots=True)
class JWKSPolicy:
    """How a JWKS is cached and refreshed.

    Keys are refetched after `ttl_s`, or as soon as a token names an unknown
    `kid` (an identity provider rotating in a new key), but never more often than
    once per `min_refresh_interval_s`: a flood of tokens with made-up `kid`s costs
    the identity provider one request per interval, and a token signed with a key
    just published is refused for at most that long.
    """

    ttl_s: float = 300.0
    min_refresh_interval_s: float = 2.0
    timeout_s: float = 5.0
    max_bytes: int = 1_000_000

    def __post_init__(self) -> None:
        if self.ttl_s <= 0 or self.timeout_s <= 0 or self.max_bytes <= 0:
            raise ValueError("JWKS ttl_s, timeout_s and max_bytes must be positive")
        if self.min_refresh_interval_s < 0:
            raise ValueError("JWKS min_refresh_interval_s must not be negative")


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted issuer (`iss`): exactly one key source, and what its tokens grant.

    `audiences` empty means no `aud` check; otherwise the token must name one
    of them. Claims a token leaves out fall back to `default_tenant`,
    `default_models` (None: every model) and `tenant_defaults[tenant]`.
    """

    issuer: str
    algorithms: tuple[str, ...]
    hs_secret: str | None = field(default=None, repr=False)
    public_key_pem: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    audiences: tuple[str, ...] = ()
    leeway_s: float = 30.0
    claims: ClaimNames = field(default_factory=ClaimNames)
    default_tenant: str = "default"
    default_models: frozenset[str] | None = None
    tenant_defaults: dict[str, Limits] = field(default_factory=dict)
    jwks: JWKSPolicy = field(default_factory=JWKSPolicy)

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("issuer must not be empty")
        self._check_algorithms()
        self._check_key_source()
        if not 0 <= self.leeway_s <= 600:
            raise ValueError(f"{self.issuer}: leeway_s must be between 0 and 600 seconds")
        if not self.default_tenant:
            raise ValueError(f"{self.issuer}: default_tenant must not be empty")
        if any(not aud for aud in self.audiences):
            raise ValueError(f"{self.issuer}: audiences must not contain an empty string")

    @property
    def is_hmac(self) -> bool:
        return self.algorithms[0] in HMAC_ALGORITHMS

    def _check_algorithms(self) -> None:
        if not self.algorithms:
            raise ValueError(f"{self.issuer}: algorithms must list at least one algorithm")
        if any(alg.lower() == "none" for alg in self.algorithms):
            raise ValueError(f"{self.issuer}: algorithm 'none' is never accepted")
        unknown = sorted(set(self.algorithms) - SUPPORTED_ALGORITHMS)
        if unknown:
            raise ValueError(
                f"{self.issuer}: unsupported algorithms {unknown}; "
                f"choose from {sorted(SUPPORTED_ALGORITHMS)}"
            )
        hmac = set(self.algorithms) & HMAC_ALGORITHMS
        if hmac and len(hmac) != len(set(self.algorithms)):
            raise ValueError(
                f"{self.issuer}: HS* algorithms cannot be mixed with asymmetric ones "
                "for one issuer (that is how HS/RS key confusion happens)"
            )

    def _check_key_source(self) -> None:
        sources = [s for s in (self.hs_secret, self.public_key_pem, self.jwks_url) if s]
        if len(sources) != 1:
            raise ValueError(
                f"{self.issuer}: set exactly one of hs_secret, public_key_pem, jwks_url"
            )
        if self.is_hmac != bool(self.hs_secret):
            raise ValueError(
                f"{self.issuer}: hs_secret goes with HS* algorithms only, "
                "public_key_pem and jwks_url with asymmetric ones only"
            )
        if self.hs_secret:
            need = max(HMAC_MIN_SECRET_BYTES[alg] for alg in self.algorithms)
            if len(self.hs_secret.encode()) < need:
                raise ValueError(
                    f"{self.issuer}: hs_secret must be at least {need} bytes for "
                    f"{sorted(self.algorithms)}"
                )
        if self.public_key_pem:
            load_public_key(self.public_key_pem, self.algorithms)
        if self.jwks_url and urlsplit(self.jwks_url).scheme not in ("http", "https"):
            raise ValueError(f"{self.issuer}: jwks_url must be an http(s) URL")
