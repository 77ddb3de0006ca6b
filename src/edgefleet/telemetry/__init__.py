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

from edgefleet.telemetry._aggregator import Aggregator, AggregatorConfig, ResourceProbe
from edgefleet.telemetry._drift import DriftConfig, DriftReport, DriftTest, drift, drift_by_group
from edgefleet.telemetry._fleet import (
    Alert,
    AlertRules,
    CommandHook,
    Outlier,
    RetrainHook,
    RetrainRequest,
    RetrainTrigger,
    WebhookHook,
    detect_outliers,
    evaluate_alerts,
    merge_by,
)
from edgefleet.telemetry._ingest import ParsedUpload, parse_upload
from edgefleet.telemetry._outbox import (
    DEFAULT_PRIORITIES,
    DrainReport,
    Outbox,
    OutboxConfig,
    OutboxItem,
    TokenBucket,
    UploadBatch,
    decode_upload,
    encode_upload,
)
from edgefleet.telemetry._reference import CONFIDENCE_EDGES, Reference
from edgefleet.telemetry._sampler import Sampler, SamplerConfig
from edgefleet.telemetry._window import WINDOW_SCHEMA_VERSION, Window, WindowConfig, merge_windows

__all__ = [
    "CONFIDENCE_EDGES",
    "DEFAULT_PRIORITIES",
    "WINDOW_SCHEMA_VERSION",
    "Aggregator",
    "AggregatorConfig",
    "Alert",
    "AlertRules",
    "CommandHook",
    "DrainReport",
    "DriftConfig",
    "DriftReport",
    "DriftTest",
    "Outbox",
    "OutboxConfig",
    "OutboxItem",
    "Outlier",
    "ParsedUpload",
    "Reference",
    "ResourceProbe",
    "RetrainHook",
    "RetrainRequest",
    "RetrainTrigger",
    "Sampler",
    "SamplerConfig",
    "TokenBucket",
    "UploadBatch",
    "WebhookHook",
    "Window",
    "WindowConfig",
    "decode_upload",
    "detect_outliers",
    "drift",
    "drift_by_group",
    "encode_upload",
    "evaluate_alerts",
    "merge_by",
    "merge_windows",
    "parse_upload",
]
