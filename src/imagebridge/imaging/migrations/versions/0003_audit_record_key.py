"""Audit records carry their journal key (common/audit_journal.py), unique, so replay inserts once.

Adds ``audit.record_key`` and its unique index. Rows written before have none (NULL, allowed any
number of times). A database created by 0001 from the current metadata already has both: each
step is skipped when its object exists.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "record_key" not in {column["name"] for column in inspector.get_columns("audit")}:
        op.add_column("audit", sa.Column("record_key", sa.String(32)))
    if "ux_audit_record_key" not in {index["name"] for index in inspector.get_indexes("audit")}:
        op.create_index("ux_audit_record_key", "audit", ["record_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_audit_record_key", "audit")
    with op.batch_alter_table("audit") as batch:
        batch.drop_column("record_key")
