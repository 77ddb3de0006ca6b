"""64-bit health counters and bundle lengths

A device serving 1,000 requests/s overflows a 32-bit request counter in 25 days, and bundles may be
larger than 2 GiB.

Revision ID: 0003_bigint
Revises: 0002_fleet
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_bigint"
down_revision = "0002_fleet"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.alter_column(
            "h_requests", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
        )
        batch_op.alter_column(
            "h_errors", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
        )
    with op.batch_alter_table("release_variants", schema=None) as batch_op:
        batch_op.alter_column(
            "length", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("release_variants", schema=None) as batch_op:
        batch_op.alter_column(
            "length", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
        )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.alter_column(
            "h_errors", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
        )
        batch_op.alter_column(
            "h_requests", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False
        )
