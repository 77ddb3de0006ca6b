"""SuperNode keys of federated jobs: a selected device's per-job Flower node public key (issue 14)

Revision ID: 0009_fl_node_keys
Revises: 0008_device_policies
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_fl_node_keys"
down_revision = "0008_device_policies"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fl_node_keys",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.String(length=1024), nullable=False),
        sa.Column("registered", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "device_id"),
    )


def downgrade() -> None:
    op.drop_table("fl_node_keys")
