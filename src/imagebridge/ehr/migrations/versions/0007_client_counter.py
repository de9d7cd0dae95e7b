"""A change counter for client registrations: ``clients``, bumped by every insert, update or
deletion of a ``clients`` row, in the writer's transaction.

Each EHR worker keeps the origins of the registered clients' redirect URIs, the origins its CORS
grants (ehr/cors.py); a registration added (dynamic registration, the admin CLI), changed (RFC 7592,
a client disabled) or removed must reach every worker at its next browser request. The
``credentials`` counter of 0003 does not move on an insert and moves with every token change.

Revision ID: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

NAME = "clients"
#: The SQLite trigger body (no functions there).
_SQLITE_BUMP = "UPDATE generations SET value = value + 1 WHERE name = 'clients';"
_TRIGGERS = tuple(
    (f"generations_clients_count_{event.lower()}", event) for event in ("INSERT", "UPDATE", "DELETE")
)


def upgrade() -> None:
    bind = op.get_bind()
    generations = sa.table("generations", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    if NAME not in set(bind.execute(sa.select(generations.c.name)).scalars()):
        op.execute(generations.insert().values(name=NAME, value=0))
    postgres = bind.dialect.name == "postgresql"
    for trigger, event in _TRIGGERS:
        if postgres:  # imagebridge_bump_generation() is migration 0003's
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON clients")
            op.execute(
                f"CREATE TRIGGER {trigger} AFTER {event} ON clients FOR EACH ROW "
                f"EXECUTE FUNCTION imagebridge_bump_generation('{NAME}')"
            )
        else:
            op.execute(
                f"CREATE TRIGGER IF NOT EXISTS {trigger} AFTER {event} ON clients FOR EACH ROW "
                f"BEGIN {_SQLITE_BUMP} END"
            )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for trigger, _ in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}" + (" ON clients" if postgres else ""))
    generations = sa.table("generations", sa.column("name", sa.String))
    op.execute(generations.delete().where(generations.c.name == NAME))
