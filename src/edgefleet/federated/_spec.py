"""What an operator asks of a federated job, checked before any process starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet.errors import InputError

JOB_FILE = "job.json"
PROGRESS_FILE = "progress.jsonl"
INITIAL_HEAD = "initial_head.npz"
FINAL_HEAD = "final_head.npz"
EVAL_DATA = "eval.npz"
FEATURE_MODEL = "features.onnx"  # the base model with its head's input exposed; devices run it
WEIGHT_KEY = "weight"  # samples a client trained on; 1 for all when DP accounting needs equal weights


class PrivacySettings(BaseModel):
    """Central DP: client-side clipping to ``clipping_norm`` and server-side Gaussian noise of standard
    deviation ``noise_multiplier * clipping_norm / clients_per_round`` on each aggregate (Flower's
    ``DifferentialPrivacyClientSideFixedClipping``), accounted by Flower's RDP accountant at ``delta``."""

    model_config = ConfigDict(extra="forbid")

    noise_multiplier: float = Field(gt=0, le=100)
    clipping_norm: float = Field(gt=0, le=1e6)
    delta: float = Field(default=1e-5, gt=0, lt=1)


class SecAggSettings(BaseModel):
    """Flower's SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod``): the server sees only the sum of the
    sampled devices' masked updates. Each device splits its mask secrets into ``shares`` Shamir shares held
    by its neighbours (None: every sampled device); ``threshold`` shares rebuild a secret (None: 60 % of the
    shares, at least 2). Dropout tolerance: a round still unmasks while every sampled device keeps at least
    ``threshold`` live share holders (itself included), i.e. with ``shares`` = n up to n - threshold devices
    may drop after sharing their keys; fewer live holders halt the round (the previous head is kept)."""

    model_config = ConfigDict(extra="forbid")

    shares: int | None = Field(default=None, ge=3, le=10_000)
    threshold: int | None = Field(default=None, ge=2, le=10_000)
    clipping_range: float = Field(default=8.0, gt=0, le=1e6)  # |update delta| bound before quantization

    @model_validator(mode="after")
    def _threshold_below_shares(self) -> SecAggSettings:
        if self.shares is not None and self.threshold is not None and self.threshold >= self.shares:
            raise ValueError(f"threshold ({self.threshold}) must be below shares ({self.shares})")
        return self


class JobSpec(BaseModel):
    """One federated job: who trains, how long, how rounds close, and with what privacy."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    rounds: int = Field(default=5, ge=1, le=1000)
    clients_per_round: int = Field(default=5, ge=1, le=10_000)
    min_clients: int = Field(default=2, ge=1, le=10_000)
    local_epochs: int = Field(default=1, ge=1, le=100)
    learning_rate: float = Field(default=0.1, gt=0, le=10)
    round_deadline_s: float = Field(default=30.0, gt=0, le=24 * 3600)
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    proximal_mu: float = Field(default=0.1, ge=0, le=100)
    privacy: PrivacySettings | None = None
    secagg: SecAggSettings | None = None
    # what a device sends: its new head (none), or its delta from the global head as per-tensor int8 with a
    # scale (int8) or the largest FRACTION of entries with their indices (topk:FRACTION), error feedback kept
    update_compression: str = "none"
    # how devices train the head: numpy everywhere, or torch where a device has it (numpy where not)
    trainer: Literal["numpy", "torch"] = "numpy"

    @field_validator("update_compression")
    @classmethod
    def _known_compression(cls, value: str) -> str:
        if value in ("none", "int8"):
            return value
        if value.startswith("topk:"):
            try:
                fraction = float(value[5:])
            except ValueError:
                fraction = -1.0
            if 0 < fraction <= 1:
                return f"topk:{fraction:g}"
        raise ValueError(f"{value!r} is not none, int8 or topk:FRACTION with FRACTION in (0, 1]")

    @model_validator(mode="after")
    def _minimum_fits(self) -> JobSpec:
        if self.min_clients > self.clients_per_round:
            raise ValueError(
                f"min_clients ({self.min_clients}) exceeds clients_per_round ({self.clients_per_round})"
            )
        if self.update_compression != "none" and self.privacy is not None:
            raise ValueError("update_compression cannot be combined with DP (clients clip plain weights)")
        if self.secagg is not None:
            if self.privacy is not None:
                raise ValueError("secagg cannot be combined with DP here (the DP path uses the Message API)")
            if self.update_compression != "none":
                raise ValueError("secagg cannot be combined with update_compression (masks are dense)")
            if self.clients_per_round < 3:
                raise ValueError("secagg needs clients_per_round of at least 3")
            if self.secagg.shares is not None and self.secagg.shares > self.clients_per_round:
                raise ValueError(
                    f"secagg shares ({self.secagg.shares}) exceed clients_per_round ({self.clients_per_round})"
                )
            if self.secagg.shares is None and (self.secagg.threshold or 0) >= self.clients_per_round:
                raise ValueError(
                    f"secagg threshold ({self.secagg.threshold}) must be below clients_per_round"
                )
        return self

    @property
    def topk_fraction(self) -> float | None:
        if not self.update_compression.startswith("topk:"):
            return None
        return float(self.update_compression.split(":", 1)[1])

    def save(self, job_dir: Path) -> None:
        (job_dir / JOB_FILE).write_text(self.model_dump_json(indent=2), encoding="utf-8")

    @classmethod
    def load(cls, job_dir: Path) -> JobSpec:
        path = Path(job_dir) / JOB_FILE
        try:
            data = json.loads(path.read_bytes()[: 1 << 20])
        except FileNotFoundError:
            raise InputError(
                f"{job_dir} is not a federated job folder", hint="pass the folder given to fl start"
            ) from None
        except (OSError, ValueError) as e:
            raise InputError(f"{path} cannot be read: {e}", hint="the job folder is damaged") from None
        if not isinstance(data, dict):
            raise InputError(f"{path} does not hold a job", hint="the job folder is damaged")
        return cls.parse(data)

    @classmethod
    def parse(cls, data: dict) -> JobSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "job"
            raise InputError(
                f"bad federated job setting {where}: {first['msg']}",
                hint="see `edgefleet fl start --help` for the allowed ranges",
            ) from e
