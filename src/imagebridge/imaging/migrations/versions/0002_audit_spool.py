"""The audit table becomes the spool of AuditEvents for the EHR; leases for one publisher at a time.

Adds ``audit.elapsed_ms``, ``audit.streaming`` and ``audit.published`` (security.md AU-06/AU-07)
and the ``leases`` table. A database created by 0001 from the current metadata already has them: each step is
skipped when its object exists.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

from imagebridge.imaging.tables import leases

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = ("streaming", "published")


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    have = {column["name"] for column in inspector.get_columns("audit")}
    if "elapsed_ms" not in have:
        op.add_column("audit", sa.Column("elapsed_ms", sa.Float))
    for name in _COLUMNS:
        if name not in have:
            op.add_column("audit", sa.Column(name, sa.Boolean, nullable=False, server_default=sa.false()))
    if "ix_audit_published" not in {index["name"] for index in inspector.get_indexes("audit")}:
        op.create_index("ix_audit_published", "audit", ["published", "id"])
    leases.create(bind, checkfirst=True)


def downgrade() -> None:
    leases.drop(op.get_bind(), checkfirst=True)
    op.drop_index("ix_audit_published", "audit")
    with op.batch_alter_table("audit") as batch:
        for name in ("elapsed_ms", *_COLUMNS):
            batch.drop_column(name)
