"""The ``resources`` change counter in shards, so that FHIR writes stop queueing on one row.

Under 0003 every FHIR write other than an AuditEvent updated the one ``resources`` row of
``generations``; on PostgreSQL that row stays locked until the writer commits, so all such writes
ran one after another. From here each write bumps one of :data:`SHARDS` rows ``resources.<k>``,
``k`` the code of the resource id's last character modulo :data:`SHARDS`: writes of different
resources rarely share a row. Readers (ehr/smart/memo.py) take the sum of every ``resources`` row;
each committed write raises it, so a change is still seen by the very next read. The ``resources``
row of 0003 keeps its value and is no longer bumped.

Revision ID: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: Counter rows (the literal 16 in the trigger bodies below).
SHARDS = 16
#: (trigger name, event, the row whose id chooses the shard, SQL condition on the changed row).
_TRIGGERS = (
    ("generations_resources_insert", "INSERT", "NEW", "NEW.resource_type <> 'AuditEvent'"),
    (
        "generations_resources_update",
        "UPDATE",
        "NEW",
        "NEW.resource_type <> 'AuditEvent' OR OLD.resource_type <> 'AuditEvent'",
    ),
    ("generations_resources_delete", "DELETE", "OLD", "OLD.resource_type <> 'AuditEvent'"),
)
_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION imagebridge_bump_resources() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rid text;
BEGIN
    IF TG_OP = 'DELETE' THEN rid := OLD.id; ELSE rid := NEW.id; END IF;
    UPDATE generations SET value = value + 1
        WHERE name = 'resources.' || (coalesce(ascii(right(rid, 1)), 0) % 16);
    RETURN NULL;
END
$$
"""


#: SQLite trigger bodies (no functions there): the shard of the changed row's id (NEW or OLD), or
#: the one row of 0003 (None).
_SQLITE_BUMP = {
    "NEW": "UPDATE generations SET value = value + 1 "
    "WHERE name = 'resources.' || (coalesce(unicode(substr(NEW.id, -1)), 0) % 16);",
    "OLD": "UPDATE generations SET value = value + 1 "
    "WHERE name = 'resources.' || (coalesce(unicode(substr(OLD.id, -1)), 0) % 16);",
    None: "UPDATE generations SET value = value + 1 WHERE name = 'resources';",
}
#: PostgreSQL trigger functions: sharded, or the one row of 0003.
_PG_CALL = {True: "imagebridge_bump_resources()", False: "imagebridge_bump_generation('resources')"}


def _create_triggers(postgres: bool, sharded: bool) -> None:
    """The resource triggers bumping the shard of the changed id (``sharded``) or, as 0003 did,
    the one ``resources`` row."""
    for trigger, event, row, condition in _TRIGGERS:
        if postgres:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON resources")
            op.execute(
                f"CREATE TRIGGER {trigger} AFTER {event} ON resources FOR EACH ROW WHEN ({condition}) "
                f"EXECUTE FUNCTION {_PG_CALL[sharded]}"
            )
        else:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            op.execute(
                f"CREATE TRIGGER {trigger} AFTER {event} ON resources FOR EACH ROW WHEN {condition} "
                f"BEGIN {_SQLITE_BUMP[row if sharded else None]} END"
            )


def upgrade() -> None:
    bind = op.get_bind()
    generations = sa.table("generations", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    have = {row.name for row in bind.execute(sa.select(generations.c.name))}
    for k in range(SHARDS):
        if f"resources.{k}" not in have:
            op.execute(generations.insert().values(name=f"resources.{k}", value=0))
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        op.execute(_PG_FUNCTION)
    _create_triggers(postgres, sharded=True)


def downgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    generations = sa.table("generations", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    # the one row takes over the shards' count, so that it never goes back to a value seen before
    shards = sa.select(sa.func.coalesce(sa.func.sum(generations.c.value), 0)).where(
        generations.c.name.like("resources.%")
    )
    op.execute(
        generations.update()
        .where(generations.c.name == "resources")
        .values(value=generations.c.value + shards.scalar_subquery())
    )
    op.execute(generations.delete().where(generations.c.name.like("resources.%")))
    _create_triggers(postgres, sharded=False)
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS imagebridge_bump_resources()")
