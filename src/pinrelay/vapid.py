"""VAPID signatures (RFC 8292) and Web Push keys, checked with ``cryptography``.

A verified token is remembered until its ``exp`` (bounded), so a sender that signs
once and reuses the token (as pywebpush and web-push do within a process) costs one
ECDSA verification, not one per push.  The cache holds a digest of each token, not
the token: a sender may sign tokens as long as the request head allows (16 KB), and
10,000 of them would otherwise hold 160 MB.  Parsing and claim rules are pure, in
core/webpush.py; this module only adds the curve.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.webpush import VapidToken, b64url_decode, check_claims, split_jwt

#: Tokens remembered at once; past it the oldest go first.
MAX_CACHED_TOKENS = 10_000
#: Parsed public keys remembered (parsing a point costs about as much as hashing).
MAX_CACHED_KEYS = 1_000
_ECDSA = ec.ECDSA(hashes.SHA256())


def p256_point(value: str, what: str) -> ec.EllipticCurvePublicKey:
    """A base64url uncompressed P-256 point (65 bytes); 422 with why if not."""
    try:
        raw = b64url_decode(value)
    except ValueError:
        raise PinrelayError(f"{what} is not base64url", ErrorCode.INVALID) from None
    if len(raw) != 65 or raw[0] != 4:
        raise PinrelayError(
            f"{what} must be an uncompressed P-256 point (65 bytes, base64url)",
            ErrorCode.INVALID,
        )
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise PinrelayError(f"{what} is not a point on P-256", ErrorCode.INVALID) from None


def auth_secret(value: str) -> bytes:
    """A base64url 16-byte RFC 8291 auth secret; 422 if not."""
    try:
        raw = b64url_decode(value)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise PinrelayError("keys.auth must be 16 bytes, base64url", ErrorCode.INVALID)
    return raw


def _digest(token: VapidToken, audience: str) -> bytes:
    """What a verified token is remembered by: 32 bytes, whatever its size; the key
    and audience are in it, so the token names no other key or audience from cache."""
    return hashlib.sha256(f"{token.jwt}\0{token.key}\0{audience}".encode()).digest()


class VapidVerifier:
    """Checks VAPID tokens; remembers the good ones until they expire."""

    def __init__(self) -> None:
        #: Digest of (token, key, audience) -> its ``exp``.
        self._tokens: OrderedDict[bytes, float] = OrderedDict()
        self._keys: OrderedDict[str, ec.EllipticCurvePublicKey] = OrderedDict()
        #: ECDSA verifications done (a benchmark and a test read it).
        self.verifications = 0

    def verify(self, token: VapidToken, audience: str, now: float) -> None:
        """Raise 401 unless ``token`` is signed by its own key, for ``audience``,
        and unexpired (at most 24 h ahead).  Which key it names is the caller's
        question (a subscription's key: 403 if another)."""
        digest = _digest(token, audience)
        exp = self._tokens.get(digest)
        if exp is not None:
            if exp > now:
                return
            del self._tokens[digest]
        jwt = split_jwt(token.jwt)
        check_claims(jwt.claims, audience, now)
        public = self._key(token.key)
        r, s = jwt.signature[:32], jwt.signature[32:]
        der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        self.verifications += 1
        try:
            public.verify(der, jwt.signing_input, _ECDSA)
        except InvalidSignature:
            raise PinrelayError(
                "the VAPID token's signature does not verify with its key (k)",
                ErrorCode.UNAUTHORIZED,
            ) from None
        self._tokens[digest] = float(jwt.claims.exp)
        if len(self._tokens) > MAX_CACHED_TOKENS:
            self._tokens.popitem(last=False)

    def _key(self, value: str) -> ec.EllipticCurvePublicKey:
        public = self._keys.get(value)
        if public is None:
            try:
                public = p256_point(value, "the VAPID key (k)")
            except PinrelayError as exc:
                raise PinrelayError(exc.detail, ErrorCode.UNAUTHORIZED) from None
            self._keys[value] = public
            if len(self._keys) > MAX_CACHED_KEYS:
                self._keys.popitem(last=False)
        return public
