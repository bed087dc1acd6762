"""Build the delivery stages of a config's extra sinks (``sinks:``) and of in-process callables."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pipeline.config.sinks import SinksConfig
from pipeline.core.metrics import MetricsRegistry
from pipeline.deliver.callback import CallbackSettings, CallbackTransport, EventSink
from pipeline.deliver.delivery import DeliveryStage

if TYPE_CHECKING:
    from pipeline.deliver.ha_discovery import HaSite

log = logging.getLogger(__name__)


class SinkConfigError(ValueError):
    """Two sinks would share a spool file. The message names both config keys."""


def build_sinks(
    cfg: SinksConfig,
    metrics: MetricsRegistry | None = None,
    *,
    callables: list[EventSink] | None = None,
    redis_spool_path: str | None = None,
    ha_site: HaSite | None = None,
) -> list[DeliveryStage]:
    """One delivery stage per configured sink and per callable; each opens (and locks) its own spool here, so
    a bad path fails at startup. ``ha_site``: the cameras, zones and doors Home Assistant discovery announces
    (with ``sinks.mqtt.home_assistant.enabled``)."""
    owners = cfg.spool_owners()
    if redis_spool_path is not None and redis_spool_path in owners:
        raise SinkConfigError(
            f"{owners[redis_spool_path]} {redis_spool_path!r} is also redis.spool_path; give each sink its own"
        )
    stages: list[DeliveryStage] = []
    try:
        if cfg.mqtt is not None:
            from pipeline.deliver.mqtt import MqttTransport

            stages.append(
                DeliveryStage(
                    "sink:mqtt",
                    MqttTransport(cfg.mqtt),
                    cfg.mqtt,
                    metrics=metrics,
                    spool_key="sinks.mqtt.spool_path",
                    notice_interval_s=cfg.mqtt.notice_interval_s,
                )
            )
            for hint in cfg.subscribe_hints():
                log.info("events also go to MQTT %s; watch them with: %s", stages[-1].transport.target, hint)
            if cfg.mqtt.home_assistant.enabled:
                from pipeline.deliver.ha_discovery import HaSite, HomeAssistantTransport

                stages.append(
                    DeliveryStage(
                        "sink:home-assistant",
                        HomeAssistantTransport(cfg.mqtt, ha_site or HaSite()),
                        CallbackSettings(),
                        metrics=metrics,
                        counter_prefix="sink_home_assistant",
                    )
                )
        for i, hook in enumerate(cfg.webhooks):
            from pipeline.deliver.webhook import WebhookTransport

            transport = WebhookTransport(hook)
            stages.append(
                DeliveryStage(
                    f"sink:{transport.name}",
                    transport,
                    hook,
                    metrics=metrics,
                    spool_key=f"sinks.webhooks[{i}].spool_path",
                    counter_prefix=f"sink_webhook_{hook.name.replace('-', '_').replace('.', '_')}",
                    notice_interval_s=hook.notice_interval_s,
                )
            )
        for fn in callables or []:
            cb = CallbackTransport(fn)
            stages.append(
                DeliveryStage(
                    f"sink:{cb.name}",
                    cb,
                    CallbackSettings(),
                    metrics=metrics,
                    counter_prefix="sink_callback",
                    logger=logging.getLogger("pipeline.deliver.callback"),
                )
            )
    except Exception:
        for stage in stages:  # release the spools already opened (their locks)
            stage.spool.close()
        raise
    return stages
