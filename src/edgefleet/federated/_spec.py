"""What an operator asks of a federated job, checked before any process starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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

    @model_validator(mode="after")
    def _minimum_fits(self) -> JobSpec:
        if self.min_clients > self.clients_per_round:
            raise ValueError(
                f"min_clients ({self.min_clients}) exceeds clients_per_round ({self.clients_per_round})"
            )
        return self

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
