"""Clients get ``imaging_source``: a registered imaging source (a modality or an archive feed).

A backend client registered as an imaging source may store instances (STOW-RS) for any DICOM
PatientID, also one that matches no Patient yet (the study then waits unreconciled). Every other
writer may store only for the patients the policy lets it reach (security.md ISO-08; docs/policy.md
"Writing imaging"). Existing clients are not sources. A database created from the current metadata
already has the column: the step is skipped then.

Revision ID: 0006
"""

import sqlalchemy as sa

from imagebridge.common import db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    db.add_missing_column(
        "clients", sa.Column("imaging_source", sa.Boolean, nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    db.drop_column("clients", "imaging_source")
