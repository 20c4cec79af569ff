"""Route dependencies: the service, and the role check plus rate limit every route declares.

A route declares its role once, as ``Depends(require("reader"))`` (which also puts the key
schemes into /docs). :class:`GuardedRoute` runs that check *before* FastAPI reads and parses
the body, so a caller without a valid key learns nothing about what a valid body looks like
and its requests cost no parsing: 401/403/429 come before 400/422.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response, Security
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from twinloop.api.auth import AuthError, KeyStore, Principal, Role
from twinloop.api.errors import ApiError, retry_after
from twinloop.api.ratelimit import RateLimiter
from twinloop.serving.service import Service

# Declared so /docs shows both ways of sending a key; the values are read in authorize().
_BEARER = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key> (the openai client's way)")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


def service(request: Request) -> Service:
    return request.app.state.service


def client_address(request: Request) -> str:
    """The peer's address (behind a reverse proxy: the proxy's, for every client)."""
    return request.client.host if request.client else "unknown"


async def authorize(request: Request, role: Role) -> Principal:
    """Admit the caller of ``request`` if it has ``role``, within its rate limit (once per request).

    Raises (answered by the app's handlers):
        AuthError: 401 without a valid key, 403 without the role.
        ApiError: 429 with ``Retry-After`` over the caller's rate limit, or when its address
            has failed authentication more than ``api.auth_failures_per_minute`` times.
    """
    done: Principal | None = getattr(request.state, "principal", None)
    if done is not None and done.may(role):
        return done
    keys: KeyStore = request.app.state.keys
    route = getattr(request.scope.get("route"), "path", request.url.path)
    address = client_address(request)
    try:
        principal = keys.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"),
                                      required=role, route=route, request_id=request.state.request_id,
                                      client=address)
    except AuthError as e:
        # Failed authentications have a budget per address, so a flood of bad keys is slowed
        # down to 429s (which cost nothing further) instead of being answered one by one.
        # A valid key is never refused by it: behind a proxy every client shares an address,
        # and one client's bad key must not lock the others out.
        failures: RateLimiter = request.app.state.auth_failure_limiter
        if e.status == 401 and (wait := failures.acquire(address)) is not None:
            request.state.key_id = e.failure.key_id
            raise ApiError(429, f"too many failed authentications from this address (limit "
                                f"{int(failures.capacity)} per minute); retry in {wait:.1f} s",
                           code="auth_rate_limited", headers=retry_after(wait)) from None
        raise
    request.state.key_id = principal.key_id
    limiter: RateLimiter = request.app.state.limiter
    caller = principal.key_hash or f"addr:{request.client.host if request.client else 'unknown'}"
    wait = limiter.acquire(caller)
    if wait is not None:
        raise ApiError(429, f"rate limit of {int(limiter.capacity)} requests per minute exceeded; "
                            f"retry in {wait:.1f} s", code="rate_limit_exceeded", headers=retry_after(wait))
    request.state.principal = principal
    return principal


def require(role: Role) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """The dependency a route declares to admit ``role`` and above."""

    async def require_role(request: Request,
                           _bearer: HTTPAuthorizationCredentials | None = Security(_BEARER),
                           _key: str | None = Security(_API_KEY)) -> Principal:
        return await authorize(request, role)

    require_role.role = role  # type: ignore[attr-defined]  # read by GuardedRoute
    require_role.__name__ = f"require_{role}"
    return require_role


def _declared_role(dependant: Dependant) -> Role | None:
    for dep in dependant.dependencies:
        role = getattr(dep.call, "role", None) or _declared_role(dep)
        if role:
            return role
    return None


class GuardedRoute(APIRoute):
    """An APIRoute that checks its declared role before the body is read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        role = _declared_role(self.dependant)
        if role is None:
            return handler

        async def guarded(request: Request) -> Response:
            await authorize(request, role)
            return await handler(request)

        return guarded
