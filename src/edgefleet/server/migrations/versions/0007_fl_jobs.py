"""federated jobs an operator runs, named to the selected devices in their heartbeat answers (issue 14)

Revision ID: 0007_fl_jobs
Revises: 0006_update_policies
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007_fl_jobs"
down_revision = "0006_update_policies"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "fl_jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("superlink", sa.String(length=256), nullable=False),
        sa.Column("selector", sa.String(length=1024), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("spec", _JSON, nullable=False),
        sa.Column("rounds", _JSON, nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("reason", sa.String(length=1024), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("fl_jobs")
