"""The initial EHR schema: every table in imagebridge.ehr.tables.

Revision ID: 0001
"""

from alembic import op

from imagebridge.ehr.tables import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
