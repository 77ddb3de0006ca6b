"""Device identity and signed director answers

``director_seq`` numbers the director's answers to a device (0: it never sent a heartbeat, it is
pending); ``cert_expires`` is when its client certificate (mutual TLS) expires. Devices that already
reported before this revision start at 1, so they are not taken for pending ones.

Revision ID: 0004_identity
Revises: 0003_bigint
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_identity"
down_revision = "0003_bigint"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("director_seq", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("cert_expires", sa.Float(), nullable=True))
    op.execute("UPDATE devices SET director_seq = 1 WHERE state IS NULL OR state <> 'enrolled'")


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("cert_expires")
        batch_op.drop_column("director_seq")
