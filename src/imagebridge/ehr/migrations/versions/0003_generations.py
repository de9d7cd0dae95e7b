"""Change counters for what EHR workers remember between requests (ehr/smart/memo.py).

Adds the ``generations`` table with its two rows and the triggers that bump them in the
transaction of each change: ``credentials`` on every update or deletion of a token or a client
registration, ``resources`` on every insert, update or deletion of a FHIR resource other than an
AuditEvent. Triggers, not application code, so that every writer (each worker, the admin CLI, a
migration) is seen. A database created by 0001 from the current metadata has the table already.

Revision ID: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: (trigger name, event, table, counter, SQL condition on the changed row or None).
_TRIGGERS = (
    ("generations_tokens_update", "UPDATE", "tokens", "credentials", None),
    ("generations_tokens_delete", "DELETE", "tokens", "credentials", None),
    ("generations_clients_update", "UPDATE", "clients", "credentials", None),
    ("generations_clients_delete", "DELETE", "clients", "credentials", None),
    ("generations_resources_insert", "INSERT", "resources", "resources", "NEW.resource_type <> 'AuditEvent'"),
    (
        "generations_resources_update",
        "UPDATE",
        "resources",
        "resources",
        "NEW.resource_type <> 'AuditEvent' OR OLD.resource_type <> 'AuditEvent'",
    ),
    ("generations_resources_delete", "DELETE", "resources", "resources", "OLD.resource_type <> 'AuditEvent'"),
)
#: SQLite trigger bodies (no functions there), one per counter.
_SQLITE_BUMP = {
    "credentials": "UPDATE generations SET value = value + 1 WHERE name = 'credentials';",
    "resources": "UPDATE generations SET value = value + 1 WHERE name = 'resources';",
}
_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION imagebridge_bump_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE generations SET value = value + 1 WHERE name = TG_ARGV[0];
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    bind = op.get_bind()
    if "generations" not in sa.inspect(bind).get_table_names():
        op.create_table(
            "generations",
            sa.Column("name", sa.String(40), primary_key=True),
            sa.Column("value", sa.BigInteger, nullable=False, server_default="0"),
        )
    generations = sa.table("generations", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    have = {row.name for row in bind.execute(sa.select(generations.c.name))}
    for name in ("credentials", "resources"):
        if name not in have:
            op.execute(generations.insert().values(name=name, value=0))
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        op.execute(_PG_FUNCTION)
    for trigger, event, table, counter, condition in _TRIGGERS:
        if postgres:
            when = f"WHEN ({condition}) " if condition else ""
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
            op.execute(
                f"CREATE TRIGGER {trigger} AFTER {event} ON {table} FOR EACH ROW {when}"
                f"EXECUTE FUNCTION imagebridge_bump_generation('{counter}')"
            )
        else:
            when = f"WHEN {condition} " if condition else ""
            op.execute(
                f"CREATE TRIGGER IF NOT EXISTS {trigger} AFTER {event} ON {table} FOR EACH ROW {when}"
                f"BEGIN {_SQLITE_BUMP[counter]} END"
            )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for trigger, _, table, _, _ in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}" + (f" ON {table}" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS imagebridge_bump_generation()")
    op.drop_table("generations")
