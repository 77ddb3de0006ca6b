"""samples: sampled inputs from devices with their labels, and per-group sample policies (issue 13)

Revision ID: 0005_samples
Revises: 0004_identity
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005_samples"
down_revision = "0004_identity"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("release", sa.String(length=160), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("device_class", sa.String(length=64), nullable=True),
        sa.Column("region", sa.String(length=64), nullable=True),
        sa.Column("t", sa.Float(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("predicted", sa.String(length=128), nullable=True),
        sa.Column("privacy", sa.String(length=16), nullable=False),
        sa.Column("input_kind", sa.String(length=16), nullable=False),
        sa.Column("content_type", sa.String(length=64), nullable=True),
        sa.Column("blob_sha256", sa.String(length=64), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("meta", _JSON, nullable=False),
        sa.Column("label", sa.String(length=128), nullable=True),
        sa.Column("label_source", sa.String(length=16), nullable=True),
        sa.Column("labelled_by", sa.String(length=128), nullable=True),
        sa.Column("labelled_at", sa.Float(), nullable=True),
        sa.Column("outcome", _JSON, nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.create_index("ix_samples_release_received", ["release", "received_at"], unique=False)
        batch_op.create_index("ix_samples_device_received", ["device_id", "received_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_samples_predicted"), ["predicted"], unique=False)
        batch_op.create_index(batch_op.f("ix_samples_label"), ["label"], unique=False)
        batch_op.create_index(batch_op.f("ix_samples_blob_sha256"), ["blob_sha256"], unique=False)
    op.create_table(
        "sample_policies",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("selector", sa.String(length=1024), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("policy", _JSON, nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("sample_policies")
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_samples_blob_sha256"))
        batch_op.drop_index(batch_op.f("ix_samples_label"))
        batch_op.drop_index(batch_op.f("ix_samples_predicted"))
        batch_op.drop_index("ix_samples_device_received")
        batch_op.drop_index("ix_samples_release_received")
    op.drop_table("samples")
