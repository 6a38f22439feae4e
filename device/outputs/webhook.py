"""[[webhook]]: each event POSTed as JSON to a URL, optionally signed with HMAC-SHA256.

Headers: Content-Type: application/json, X-Prodrec-Event-Id (the event's stable id, to drop a
duplicate), and with a secret X-Prodrec-Signature: sha256=<hex HMAC-SHA256(secret, body)>,
computed over the exact bytes of the body. Standard library only (urllib).

2xx: delivered. 408 and 429 (the receiver asks to come back later) and 5xx, timeouts, refused
connections: retried. Any other 4xx: the receiver refuses this request and will refuse it again,
so it is not retried; its reply is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..config import WebhookConfig
from .base import DeliveryError, Output, RejectedError

SIGNATURE_HEADER = "X-Prodrec-Signature"
EVENT_ID_HEADER = "X-Prodrec-Event-Id"
_RETRYABLE_4XX = (408, 429)
_REPLY_CHARS = 300  # of a refusal's reply, logged


def signature(secret: str, body: bytes) -> str:
    """The X-Prodrec-Signature value for `body`: "sha256=" + hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def body_of(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class WebhookOutput(Output):
    kind = "webhook"

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.name = config.name or f"webhook {config.url}"
        self._state = "ok"  # written by the worker thread, read by any
        # A URL's user:password must not reach logs or the status.
        parts = urllib.parse.urlsplit(config.url)
        host = parts.hostname or ""
        self._shown = urllib.parse.urlunsplit(
            (parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, "", "")
        )

    def describe(self) -> str:
        where = f"POST {self._shown}" + (", signed" if self.config.secret else "")
        return f"{self.name} ({where})" if self.config.name else f"webhook ({where})"

    def state(self) -> str:
        return self._state

    def send(self, event: dict[str, Any], crop_jpeg: bytes | None) -> str:
        body = body_of(event)
        headers = {"Content-Type": "application/json", "User-Agent": "prodrec"}
        if event.get("id"):
            headers[EVENT_ID_HEADER] = str(event["id"])
        if self.config.secret:
            headers[SIGNATURE_HEADER] = signature(self.config.secret, body)
        request = urllib.request.Request(self.config.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as reply:
                status = reply.status
        except urllib.error.HTTPError as exc:
            text = _reply_text(exc)
            what = f"HTTP {exc.code} {exc.reason}" + (f": {text}" if text else "")
            if 400 <= exc.code < 500 and exc.code not in _RETRYABLE_4XX:
                self._state = f"refused the last event ({what})"
                raise RejectedError(what) from exc
            self._state = f"failing ({what})"
            raise DeliveryError(what) from exc
        except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timeout, TLS
            reason = getattr(exc, "reason", exc)
            self._state = f"failing ({reason})"
            raise DeliveryError(f"{self._shown}: {reason}") from exc
        self._state = "ok"
        return f"HTTP {status}"


def _reply_text(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read(_REPLY_CHARS * 4)
    except OSError:
        return ""
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:_REPLY_CHARS]
