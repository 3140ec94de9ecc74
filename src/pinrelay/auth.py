"""Who is calling: every edge authenticates here and gets a :data:`Principal`.

An API key yields a :class:`KeyPrincipal` (its id, scope and tenant); a device's
token yields a :class:`DevicePrincipal`.  The link, the inbox and every HTTP route
call :class:`Authenticator`, so the failure limits, the answers (one answer for an
unknown PIN and a wrong token: no PIN enumeration) and the metrics are the same on
every edge.  Idempotency keys, quotas and audit hang off the principal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pinrelay.core.errors import ErrorCode, PinrelayError, RateLimited
from pinrelay.core.ids import canonical_pairing_code, hash_secret, is_pin, secret_matches
from pinrelay.core.model import Device, Scope
from pinrelay.core.ratelimit import FailureLimiter
from pinrelay.core.tenants import Quotas, may_reach
from pinrelay.metrics import Metrics
from pinrelay.store.base import Store

#: A principal's quotas when its tenant sets none (the relay's admin key's).
NO_QUOTAS = Quotas()
#: The id of the relay's own admin key (from config, not the store).
ADMIN_KEY_ID = "admin"
#: A source may fail this many times more than a source with one PIN (DECISIONS 31).
SOURCE_FACTOR = 10
#: The answers to a pairing code that was used or that expired (410 Gone).
_PAIRING_GONE = {
    "used": "this pairing code was used already",
    "expired": "this pairing code expired",
    "replaced": "a newer pairing code was made for this device: use that one",
}


@dataclass(frozen=True, slots=True)
class KeyPrincipal:
    """An application server or operator holding an API key of ``tenant``; the
    relay's own admin key (from its config) has no tenant and sees every one."""

    key_id: str
    scope: Scope
    tenant: str | None
    #: The tenant's quotas as read at authentication (core/quotas.py: no second read).
    quotas: Quotas = NO_QUOTAS

    def allows(self, *scopes: Scope) -> bool:
        """Whether this key may do what needs one of ``scopes`` (admin may do all)."""
        return self.scope is Scope.ADMIN or self.scope in scopes

    @property
    def relay_admin(self) -> bool:
        return self.tenant is None

    def reaches(self, device: Device) -> bool:
        """Whether this key may act on ``device``: its own tenant's (the relay's admin
        key: any).  A grant does not count: grants are for pushes only, which the
        store judges (Store.append)."""
        return may_reach(self.tenant, device.tenant)


@dataclass(frozen=True, slots=True)
class DevicePrincipal:
    """A device holding its token; ``device`` is its record as read at login."""

    device: Device

    @property
    def pin(self) -> str:
        return self.device.pin

    @property
    def tenant(self) -> str | None:
        return self.device.tenant


Principal = KeyPrincipal | DevicePrincipal


def bearer(authorization: str | None) -> str:
    """The credentials of an ``Authorization: Bearer …`` header, or UNAUTHORIZED."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise PinrelayError("send 'Authorization: Bearer <key>'", ErrorCode.UNAUTHORIZED)
    return credentials.strip()


class Authenticator:
    """Checks API keys and device tokens against the store, with failure limits.

    ``source`` names where a request comes from, edge included ("api 10.0.0.7",
    "link 10.0.0.7"), so failures on one edge do not lock a source out of another.

    Failures count per source (``SOURCE_FACTOR`` times the limiter's limit) and per
    source and PIN (the limiter's limit), never per PIN alone: nobody's failures
    lock a device's right token out from another source (DECISIONS 31).
    """

    def __init__(
        self,
        store: Store,
        limiter: FailureLimiter,
        metrics: Metrics,
        clock: Callable[[], float],
        admin_key: str | None,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.metrics = metrics
        self.clock = clock
        self._admin_hash = hash_secret(admin_key) if admin_key else None

    def _keys(self, source: str, pin: str | None) -> tuple[tuple[str, int], ...]:
        """The limiter's keys for a try, with their limits."""
        per_source = (source, self.limiter.limit * SOURCE_FACTOR)
        if pin is None:
            return (per_source,)
        return per_source, (f"{source} {pin}", self.limiter.limit)

    def _check_limited(self, keys: tuple[tuple[str, int], ...]) -> None:
        now = self.clock()
        wait = max(self.limiter.retry_after(k, now, limit) for k, limit in keys)
        if wait > 0:
            raise RateLimited("too many failed authentications; retry later", wait)

    def _failed(self, edge: str, keys: tuple[tuple[str, int], ...], detail: str) -> PinrelayError:
        now = self.clock()
        for k, limit in keys:
            self.limiter.failed(k, now, limit)
        self.metrics.auth_failures.labels(edge).inc()
        return PinrelayError(detail, ErrorCode.UNAUTHORIZED)

    async def api_key(self, presented: str, source: str, *scopes: Scope) -> KeyPrincipal:
        """The key's principal if it may do what needs one of ``scopes``.

        Raises UNAUTHORIZED (unknown or revoked), FORBIDDEN (scope) or RATE_LIMITED.
        """
        keys = self._keys(source, None)
        self._check_limited(keys)
        if self._admin_hash is not None and secret_matches(presented, self._admin_hash):
            return KeyPrincipal(ADMIN_KEY_ID, Scope.ADMIN, None)
        key = await self.store.find_key(hash_secret(presented))
        if key is None or key.revoked or not secret_matches(presented, key.key_hash):
            raise self._failed("api", keys, "unknown or revoked API key")
        tenant = await self.store.get_tenant(key.tenant)
        if tenant is None or not tenant.live:
            # Its tenant was deleted: the key went with it.
            raise self._failed("api", keys, "unknown or revoked API key")
        if tenant.suspended:
            raise PinrelayError(
                f"tenant {tenant.id} is suspended: its keys may not act", ErrorCode.FORBIDDEN
            )
        principal = KeyPrincipal(key.id, key.scope, key.tenant, tenant.quotas)
        if not principal.allows(*scopes):
            wanted = " or ".join(s.value for s in scopes) or "admin"
            raise PinrelayError(
                f"this key has scope '{key.scope.value}'; this needs {wanted}", ErrorCode.FORBIDDEN
            )
        return principal

    async def device(self, pin: str, token: str, source: str) -> DevicePrincipal:
        """The device's principal if ``token`` is its token.

        Raises UNAUTHORIZED with one answer for a malformed or unknown PIN and a
        wrong token, or RATE_LIMITED.  A malformed PIN never becomes a limiter key
        (its memory stays bounded by what a PIN can be).
        """
        edge = source.partition(" ")[0]
        keys = self._keys(source, pin if is_pin(pin) else None)
        self._check_limited(keys)
        device = await self.store.get_device(pin) if len(keys) == 2 else None
        if device is None or not secret_matches(token, device.token_hash):
            raise self._failed(edge, keys, "unknown PIN or wrong token")
        self.limiter.succeeded(keys[-1][0])
        return DevicePrincipal(device)

    async def pairing_code(self, typed: str, source: str) -> str:
        """The PIN a pairing code was made for, using the code up (once, on any relay).

        Raises NOT_FOUND (no such code), GONE (used or expired) or RATE_LIMITED:
        failures count per source, with the limiter's limit (a person mistyping a
        few times gets through; 50-bit codes are not guessed anyway).
        """
        keys = ((f"pairing {source}", self.limiter.limit),)
        self._check_limited(keys)
        code = canonical_pairing_code(typed)
        found = None
        if code is not None:
            found = await self.store.redeem_pairing(hash_secret(code), int(self.clock() * 1000))
        if found is not None and found.pin is not None:
            return found.pin
        self._failed(source.partition(" ")[0], keys, "")  # counted, whatever the answer
        if found is not None and found.outcome in _PAIRING_GONE:
            raise PinrelayError(_PAIRING_GONE[found.outcome], ErrorCode.GONE)
        raise PinrelayError("unknown pairing code", ErrorCode.NOT_FOUND)
