"""fleet observability: telemetry rollups, fleet alerts, retraining requests

Revision ID: 0002_fleet
Revises: 0001
Create Date: 2026-11-22 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_fleet"
down_revision = "0001"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "telemetry_rollups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("release", sa.String(length=160), nullable=False),
        sa.Column("reference_id", sa.String(length=16), nullable=False),
        sa.Column("resolution_s", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Float(), nullable=False),
        sa.Column("start", sa.Float(), nullable=False),
        sa.Column("end", sa.Float(), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("data", _JSON, nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "device_id",
            "release",
            "reference_id",
            "resolution_s",
            "bucket",
            name="uq_telemetry_rollup_bucket",
        ),
    )
    with op.batch_alter_table("telemetry_rollups", schema=None) as batch_op:
        batch_op.create_index("ix_telemetry_rollups_bucket", ["bucket"], unique=False)

    op.create_table(
        "fleet_alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("subject", _JSON, nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("evidence", _JSON, nullable=False),
        sa.Column("first_at", sa.Float(), nullable=False),
        sa.Column("last_at", sa.Float(), nullable=False),
        sa.Column("resolved_at", sa.Float(), nullable=True),
        sa.Column("evaluations", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("fleet_alerts", schema=None) as batch_op:
        batch_op.create_index("ix_fleet_alerts_key_state", ["key", "state"], unique=False)
        batch_op.create_index(batch_op.f("ix_fleet_alerts_rule"), ["rule"], unique=False)
        batch_op.create_index(batch_op.f("ix_fleet_alerts_state"), ["state"], unique=False)

    op.create_table(
        "retrain_requests",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("alert_key", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("subject", _JSON, nullable=False),
        sa.Column("evidence", _JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("decided_at", sa.Float(), nullable=True),
        sa.Column("fired_at", sa.Float(), nullable=True),
        sa.Column("hook", sa.String(length=512), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("retrain_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_retrain_requests_alert_key"), ["alert_key"], unique=False)
        batch_op.create_index(batch_op.f("ix_retrain_requests_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_retrain_requests_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("retrain_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_retrain_requests_status"))
        batch_op.drop_index(batch_op.f("ix_retrain_requests_created_at"))
        batch_op.drop_index(batch_op.f("ix_retrain_requests_alert_key"))
    op.drop_table("retrain_requests")
    with op.batch_alter_table("fleet_alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fleet_alerts_state"))
        batch_op.drop_index(batch_op.f("ix_fleet_alerts_rule"))
        batch_op.drop_index("ix_fleet_alerts_key_state")
    op.drop_table("fleet_alerts")
    with op.batch_alter_table("telemetry_rollups", schema=None) as batch_op:
        batch_op.drop_index("ix_telemetry_rollups_bucket")
    op.drop_table("telemetry_rollups")
