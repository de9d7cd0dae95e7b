"""A publish-queue lease of its own, so a study queued again while a worker publishes it waits.

Adds ``publish_queue.leased_until`` (publish.py ``Publisher.publish_pending``). Before it a
worker leased a study by moving its ``queued_at`` ahead, and a STOW during the publication moved
it back, letting a second worker take the study. Rows queued before have no lease (NULL); one
an older worker held is due when its moved ``queued_at`` comes. A database created by 0001 from
the current metadata already has the column: the step is skipped.

Revision ID: 0004
"""

import sqlalchemy as sa

from imagebridge.common import db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    db.add_missing_column("publish_queue", sa.Column("leased_until", sa.Float))


def downgrade() -> None:
    db.drop_column("publish_queue", "leased_until")
