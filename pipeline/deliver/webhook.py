"""HTTP webhook transport (stdlib ``urllib``): POSTs each batch as a JSON array of events.

A 2xx answer delivers the batch. Connection errors, timeouts, 5xx, 408 and 429 count as an outage (spool and
retry with back-off); any other 4xx is also retried, since dropping events on a misconfigured receiver would
be silent loss, and the outage log line says what the receiver answered. Delivery is at least once: a batch
whose answer was lost is sent again, and receivers de-duplicate by ``event_id`` (each event also carries it;
the ``Idempotency-Key`` header names the batch's first and last event).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence

from pipeline.config.sinks import WebhookConfig
from pipeline.core.sources import redact_url
from pipeline.deliver.base import Transport
from pipeline.deliver.spool import SpoolRecord


class WebhookError(ConnectionError):
    """The receiver is unreachable or did not answer 2xx. The message says what it answered."""


class WebhookTransport(Transport):
    errors = (OSError,)  # WebhookError, URLError, timeouts

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.name = f"webhook-{config.name}"
        self.title = f"webhook {config.name}"
        self.target = redact_url(config.url)

    def send(self, records: Sequence[SpoolRecord], *, replay: bool) -> int:
        if not records:
            return 0
        body = ("[" + ",".join(r.event_json for r in records) + "]").encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": f"{records[0].event_id}-{records[-1].event_id}",
            "User-Agent": "vidpipe",
            **self.config.headers,
        }
        request = urllib.request.Request(self.config.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise WebhookError(
                f"webhook {self.config.name} at {self.target} answered {exc.code} {exc.reason}"
            ) from None
        except urllib.error.URLError as exc:
            raise WebhookError(
                f"webhook {self.config.name} at {self.target} is unreachable ({exc.reason})"
            ) from None
        except TimeoutError:
            raise WebhookError(
                f"webhook {self.config.name} at {self.target} did not answer within {self.config.timeout_s}s"
            ) from None
        return len(records)

    def recover(self) -> None:
        """Nothing to reconnect: the next send is the probe (the delivery stage replays one batch first)."""
        return None

    def failed(self, exc: BaseException, in_flight: Sequence[SpoolRecord]) -> str:
        if isinstance(exc, WebhookError):
            return str(exc)
        return f"webhook {self.config.name} at {self.target} failed ({type(exc).__name__}: {exc})"
