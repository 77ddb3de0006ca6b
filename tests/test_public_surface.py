"""Pins the public surface of every package: each ``__all__`` is exactly this list.

A change here is a deliberate API change: a name joins ``__all__`` because something outside its package
(the CLI, the agent, the server, the README and docs) uses it, or a public signature returns or takes it;
everything else stays in the package's private modules.
"""

import importlib

import pytest

SURFACE = {
    "edgefleet": [
        "__version__",
    ],
    "edgefleet.agent": [
        "Agent",
        "AgentConfig",
        "Credentials",
        "Journal",
        "JournalState",
        "ModelStore",
        "PendingUpdate",
        "RuntimeHost",
        "SYSTEMD_UNIT",
        "ServerUnreachable",
        "StoredModel",
        "TrustedRepository",
        "WatchState",
        "agent_status",
        "enroll",
        "request_rollback",
    ],
    "edgefleet.bundle": [
        "Bundle",
        "BundleConfig",
        "DeltaInfo",
        "Preprocess",
        "REFERENCE_FILE",
        "VerifyReport",
        "apply_delta",
        "compare_outputs",
        "compute_reference",
        "create_bundle",
        "make_delta",
        "read_delta_header",
        "read_manifest",
        "summarize_features",
    ],
    "edgefleet.cli": [
        "app",
        "main",
    ],
    "edgefleet.client": [
        "Client",
        "DEFAULT_URL",
        "error_from_response",
    ],
    "edgefleet.errors": [
        "AgentError",
        "AuthError",
        "BudgetNotMetError",
        "BundleError",
        "CircuitOpenError",
        "ConfigError",
        "ConflictError",
        "DeadlineExceededError",
        "DeltaError",
        "DeviceRevokedError",
        "DiskSpaceError",
        "DownloadError",
        "EdgefleetError",
        "ForbiddenError",
        "GoldenMismatchError",
        "HealthCheckError",
        "InferenceError",
        "InputError",
        "IntegrityError",
        "KeyStoreError",
        "ManifestError",
        "ModelLoadError",
        "ModelTimeoutError",
        "NotFoundError",
        "OptimizeError",
        "OverloadedError",
        "PayloadTooLargeError",
        "PreprocessError",
        "RateLimitedError",
        "RegistryError",
        "RolloutError",
        "SchemaVersionError",
        "ServerError",
        "TelemetryError",
        "UnsafeArchiveError",
        "ValidationError",
        "VerificationError",
        "VersionExistsError",
    ],
    "edgefleet.examples": [
        "DigitsSplit",
        "digits",
        "train_digits_mlp",
        "write_tour_files",
    ],
    "edgefleet.federated": [
        "Coordinator",
        "JobCollector",
        "JobFailed",
        "JobSpec",
        "PrivacySettings",
        "SoftmaxHead",
        "SuperNode",
        "TrainingPolicy",
        "bundle_model",
        "export_model",
        "head_of_model",
        "job_lineage",
        "label_skewed_split",
        "load_dataset",
        "load_final_head",
        "read_progress",
        "release_from_job",
        "write_head",
    ],
    "edgefleet.optimize": [
        "BenchResult",
        "DeviceProfile",
        "OptimizeConfig",
        "OptimizeReport",
        "Variant",
        "benchmark",
        "optimize",
    ],
    "edgefleet.power": [
        "DeviceGovernor",
        "DeviceState",
        "EnergyGate",
        "POLICY_FILE",
        "Policy",
        "PolicyEngine",
        "PowerGate",
        "ScriptedSource",
        "SysfsSource",
        "open_state_source",
        "parse_trigger",
        "probe",
    ],
    "edgefleet.protocol": [
        "ActiveModel",
        "Assignment",
        "Budgets",
        "EnrollRequest",
        "EnrollResponse",
        "ErrorBody",
        "FileEntry",
        "GateThresholds",
        "GoldenSpec",
        "HardwareProfile",
        "Heartbeat",
        "HeartbeatResponse",
        "LatencyStats",
        "Lineage",
        "MAX_MANIFEST_BYTES",
        "Manifest",
        "Metrics",
        "ModelHealth",
        "Postprocess",
        "PreprocessStep",
        "RenewRequest",
        "RenewResponse",
        "Resources",
        "RuntimeRequirements",
        "ShadowSettings",
        "SignedDirective",
        "TelemetryBatch",
        "TensorSpec",
        "bundle_target_path",
        "delta_target_path",
        "manifest_json_schema",
    ],
    "edgefleet.registry": [
        "DeltaTarget",
        "KeyInfo",
        "KeyStore",
        "PublishResult",
        "PublishedBundle",
        "RefreshResult",
        "RegistryConfig",
        "Repository",
        "RepositoryServer",
        "RotationResult",
        "fetch_bundle",
        "init_keys",
    ],
    "edgefleet.runtime": [
        "ApiConfig",
        "ApiServer",
        "BatcherConfig",
        "BreakerConfig",
        "CacheConfig",
        "CloudConfig",
        "EngineConfig",
        "EscalationConfig",
        "Event",
        "FallbackConfig",
        "OrtEngine",
        "Prediction",
        "Predictor",
        "PredictorMetadata",
        "Priority",
        "Result",
        "Runtime",
        "RuntimeConfig",
        "ValidationConfig",
        "create_app",
    ],
    "edgefleet.server": [
        "Database",
        "Role",
        "RolloutEngine",
        "ServerConfig",
        "ServerHandle",
        "app_from_env",
        "create_app",
        "free_port",
        "start_server",
        "start_server_process",
    ],
    "edgefleet.retrain": [
        "DataSnapshot",
        "RetrainJob",
        "RetrainSpec",
        "Trainer",
        "find_head",
        "load_snapshot",
        "retrain_head",
        "snapshot_hash",
        "write_snapshot",
    ],
    "edgefleet.sim": [
        "Fleet",
        "ReleaseBehavior",
        "Scenario",
        "SimDevice",
        "run_demo",
    ],
    "edgefleet.telemetry": [
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
    ],
    "edgefleet.tls": [
        "CA_CERT",
        "CA_KEY",
        "CertificateAuthority",
        "IssuedCert",
        "cert_common_name",
        "cert_expires",
        "check_listen",
        "client_context",
        "is_loopback",
        "new_key_and_csr",
        "peer_cert_der",
        "peer_cert_protocol",
        "server_context",
    ],
}


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_all_is_pinned(name):
    mod = importlib.import_module(name)
    assert isinstance(mod.__all__, list)
    assert len(set(mod.__all__)) == len(mod.__all__), f"{name}.__all__ lists a name twice"
    assert sorted(mod.__all__) == SURFACE[name]


@pytest.mark.parametrize("name", sorted(SURFACE))
def test_all_names_exist(name):
    mod = importlib.import_module(name)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"{name}.__all__ lists names it does not define: {missing}"


def test_every_package_is_pinned():
    import pkgutil

    import edgefleet

    packages = {
        f"edgefleet.{m.name}" for m in pkgutil.iter_modules(edgefleet.__path__) if not m.name.startswith("_")
    }
    packages.add("edgefleet")
    assert packages == set(SURFACE)


def test_errors_share_one_root():
    import edgefleet.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.EdgefleetError)
