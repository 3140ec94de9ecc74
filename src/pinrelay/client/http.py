"""A small synchronous client for the HTTP API (used by the CLI and tests)."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """An error answer from the relay, with its problem+json fields."""

    def __init__(self, status: int, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.problem = problem or {}


def api_error(response: httpx.Response) -> ApiError:
    """The :class:`ApiError` of an error answer (problem+json, or whatever came)."""
    try:
        problem = response.json()
        detail = str(problem.get("detail") or problem.get("title"))
    except (ValueError, AttributeError):
        problem, detail = None, response.text.strip() or response.reason_phrase
    return ApiError(response.status_code, detail, problem)


class RelayClient:
    def __init__(self, url: str, key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach the relay at {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise api_error(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def download(self, path: str) -> bytes:
        """The body of a GET that answers other than JSON (a chart)."""
        try:
            response = self._http.get(path)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach the relay at {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise api_error(response)
        return response.content

    def info(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/info")
        return result

    def create_device(self, label: str | None = None) -> dict[str, Any]:
        body = {"label": label} if label is not None else {}
        result: dict[str, Any] = self.request("POST", "/v1/devices", json=body)
        return result

    def show_device(self, pin: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/devices/{pin}")
        return result

    def delete_device(self, pin: str) -> None:
        self.request("DELETE", f"/v1/devices/{pin}")

    def rotate_token(self, pin: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", f"/v1/devices/{pin}/token")
        return result

    def create_pairing(self, pin: str) -> dict[str, Any]:
        """A one-time pairing code for the device (POST /v1/devices/{pin}/pairing)."""
        result: dict[str, Any] = self.request("POST", f"/v1/devices/{pin}/pairing")
        return result

    def redeem_pairing(self, code: str) -> dict[str, Any]:
        """The device's PIN and a new token for a pairing code (no key needed)."""
        result: dict[str, Any] = self.request("POST", "/v1/pairing", json={"code": code})
        return result

    def push(
        self,
        pin: str,
        data: Any,
        *,
        ttl: int,
        topic: str | None = None,
        urgency: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"data": data, "ttl": ttl}
        if topic is not None:
            body["topic"] = topic
        if urgency is not None:
            body["urgency"] = urgency
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self.request(
            "POST", f"/v1/devices/{pin}/messages", json=body, headers=headers
        )
        return result

    def push_batch(
        self, messages: list[dict[str, Any]], idempotency_key: str | None = None
    ) -> list[dict[str, Any]]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result = self.request("POST", "/v1/messages", json={"messages": messages}, headers=headers)
        items: list[dict[str, Any]] = result["results"]
        return items

    def create_key(self, name: str, scope: str, tenant: str | None = None) -> dict[str, Any]:
        body = {"name": name, "scope": scope}
        if tenant is not None:
            body["tenant"] = tenant
        result: dict[str, Any] = self.request("POST", "/v1/keys", json=body)
        return result

    def list_keys(self) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = self.request("GET", "/v1/keys")["keys"]
        return keys

    def revoke_key(self, key_id: str) -> None:
        self.request("DELETE", f"/v1/keys/{key_id}")
