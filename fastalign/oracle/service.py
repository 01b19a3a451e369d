"""JSON over HTTP for oracles served elsewhere (an OpenAI-compatible judge, a remote reward model).

Standard library only. Every failure becomes one of two errors whose message names the URL:
`ServiceError` (unreachable, timed out, HTTP 408/429/5xx, a reply that is not the expected JSON) is
worth retrying, and `DurableOracle` retries it with back-off; `ServiceRejected` (any other 4xx: an
unknown model, a refused key, a bad request) is not, and stops the run at once.

The API key is read from the environment when the client is made and sent only as a bearer header;
it is never part of a message, a repr, the config or a checkpoint.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any

from ..config import RunConfig, check_service_url
from .base import PermanentOracleError

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_KEY_ENV = RunConfig.oracle_api_key_env


class ServiceError(RuntimeError):
    """A failure that may pass: retried by the durable oracle wrapper."""


class MalformedReply(ServiceError):
    """The server answered, but not with what the oracle asked for."""


class ServiceRejected(PermanentOracleError):
    """The server refused the request (4xx other than 408/429): retrying would be refused again."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def api_key_from_env(env_name: str) -> str | None:
    """The key held by the environment variable `env_name` (None when unset or empty)."""
    return os.environ.get(env_name) or None


class JsonService:
    """POST/GET JSON to one base URL; `timeout` bounds each request (None waits forever)."""

    def __init__(self, base_url: str, *, option: str, timeout: float | None = None,
                 api_key_env: str = DEFAULT_KEY_ENV) -> None:
        self.base_url = check_service_url(base_url, option)
        self.timeout, self.api_key_env = timeout, api_key_env
        self._key = api_key_from_env(api_key_env)

    def __repr__(self) -> str:  # never the key
        return f"JsonService({self.base_url!r}, key from ${self.api_key_env}: {'set' if self._key else 'unset'})"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}" if path else self.base_url

    def get(self, path: str) -> Any:
        return self._request("GET", self.url(path), None)

    def post(self, path: str, body: dict) -> Any:
        return self._request("POST", self.url(path), json.dumps(body).encode("utf-8"))

    def _request(self, method: str, url: str, data: bytes | None) -> Any:
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                raw = reply.read()
        except urllib.error.HTTPError as exc:
            raise self._status_error(url, exc.code, exc.read()) from None
        except (TimeoutError, socket.timeout):
            raise ServiceError(f"no reply from {url} within {self.timeout}s (oracle_timeout)") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise ServiceError(f"no reply from {url} within {self.timeout}s (oracle_timeout)") from None
            raise ServiceError(f"{url} is not reachable ({reason}): is the server running and listening there?"
                               ) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise MalformedReply(f"{url} replied with something that is not JSON: {_excerpt(raw)}") from None

    def _status_error(self, url: str, status: int, body: bytes) -> Exception:
        detail = f"HTTP {status} from {url}: {_error_message(body)}"
        if status in RETRYABLE_STATUS:
            return ServiceError(detail)
        if status in (401, 403):
            where = f"${self.api_key_env} is {'set' if self._key else 'not set'}"
            detail += (f" — the server refused the API key ({where}); export the key in the environment variable "
                       "named by --oracle_api_key_env")
        return ServiceRejected(detail, status)


def _error_message(body: bytes) -> str:
    """The server's own error message (OpenAI style {"error": {"message": …}}, or {"detail"|"message": …})."""
    try:
        data = json.loads(body)
    except ValueError:
        return _excerpt(body)
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])[:500]
    return _excerpt(body)


def _excerpt(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return repr(text[:limit] + ("…" if len(text) > limit else "")) if text else "(an empty body)"
