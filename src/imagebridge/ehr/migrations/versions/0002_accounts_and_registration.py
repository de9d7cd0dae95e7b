"""Users get roles and can be disabled; RFC 7592 registration access tokens; online_access sessions.

Adds ``users.roles`` (filled in from each user's ``fhirUser``: Patient → patient, RelatedPerson →
proxy, Practitioner → clinician), ``users.enabled``, ``clients.registration_token`` and
``tokens.session`` with its index. A database created by 0001 from the current metadata already
has them: each step is skipped when its object exists.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: The role each kind of fhirUser had before roles were stored (frozen here, as of this revision).
_ROLES = {"Patient": "patient", "RelatedPerson": "proxy", "Practitioner": "clinician"}


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)

    def columns(table: str) -> set[str]:
        return {column["name"] for column in inspector.get_columns(table)}

    have = columns("users")
    if "roles" not in have:
        op.add_column("users", sa.Column("roles", sa.String(200), nullable=False, server_default=""))
        users = sa.table("users", sa.column("fhir_user", sa.String), sa.column("roles", sa.String))
        for kind, role in _ROLES.items():
            op.execute(users.update().where(users.c.fhir_user.like(f"{kind}/%")).values(roles=role))
    if "enabled" not in have:
        op.add_column("users", sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()))
    if "registration_token" not in columns("clients"):
        op.add_column("clients", sa.Column("registration_token", sa.String(64)))
    if "session" not in columns("tokens"):
        op.add_column("tokens", sa.Column("session", sa.String(64)))
    if "ix_tokens_session" not in {index["name"] for index in inspector.get_indexes("tokens")}:
        op.create_index("ix_tokens_session", "tokens", ["session"])


def downgrade() -> None:
    op.drop_index("ix_tokens_session", "tokens")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("session")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("registration_token")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("enabled")
        batch.drop_column("roles")
