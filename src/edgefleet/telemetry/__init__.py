"""Telemetry: mergeable windows (sketches, histograms), sampling, drift tests and a durable outbox.

Device side::

    outbox = Outbox(state / "outbox.sqlite")
    agg = Aggregator(engine, reference=bundle_dir / "reference.json", outbox=outbox,
                     tags={"device_id": dev, "device_class": "cpu", "region": "eu"})
    agg.predict({"input": x})          # the aggregator is a predictor
    heartbeat.health = agg.health()     # protocol.ModelHealth with drift_score

Server side::

    up = parse_upload(body, device_id=dev, tags=server_tags)  # authenticated, validated, per item
    w = Window.from_dict(doc)           # validated, size-limited, not from the future
    merged = merge_windows(ws)          # exact: counts, sketch bins and histograms add
    drift(merged, reference).score     # KS / chi-square / PSI, Holm-corrected, in [0, 1]
    detect_outliers(per_device)        # devices far from their class
"""

from edgefleet.telemetry._aggregator import Aggregator, AggregatorConfig
from edgefleet.telemetry._drift import DriftConfig, DriftReport, drift, drift_by_group
from edgefleet.telemetry._fleet import (
    Alert,
    AlertRules,
    CommandHook,
    Outlier,
    RetrainRequest,
    WebhookHook,
    detect_outliers,
    evaluate_alerts,
)
from edgefleet.telemetry._ingest import ParsedUpload, parse_upload
from edgefleet.telemetry._outbox import Outbox, OutboxConfig
from edgefleet.telemetry._reference import Reference
from edgefleet.telemetry._sampler import Sampler, SamplerConfig
from edgefleet.telemetry._upload import DrainReport, UploadBatch, decode_upload
from edgefleet.telemetry._window import Window, WindowConfig, merge_windows

__all__ = [
    "Aggregator",
    "AggregatorConfig",
    "Alert",
    "AlertRules",
    "CommandHook",
    "DrainReport",
    "DriftConfig",
    "DriftReport",
    "Outbox",
    "OutboxConfig",
    "Outlier",
    "ParsedUpload",
    "Reference",
    "RetrainRequest",
    "Sampler",
    "SamplerConfig",
    "UploadBatch",
    "WebhookHook",
    "Window",
    "WindowConfig",
    "decode_upload",
    "detect_outliers",
    "drift",
    "drift_by_group",
    "evaluate_alerts",
    "merge_windows",
    "parse_upload",
]
