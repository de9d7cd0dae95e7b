"""Change counters per patient, so that a write drops only the imaging grants it can change.

Under 0003/0004 any FHIR write other than an AuditEvent moved the one ``resources`` count and so
dropped every imaging grant each worker remembered (ehr/smart/memo.py), although a patient's grant
reads only that patient's compartment (the Patient itself, and the studies, reports, care teams,
Consents and RelatedPersons naming the patient) and the data outside every compartment
(organizations, practitioners and their roles, Groups, Endpoints…). Two more sets of rows, bumped
in the writer's transaction, let a grant be kept until one of those changes:

* ``patients.<k>``: a Patient row, or a ``patient`` index row (``search_tokens``, so a resource moved
  to another patient bumps both), written or deleted; ``k`` the code of the patient id's last
  character modulo :data:`SHARDS`;
* ``directory.<k>``: a resource of a type outside every compartment written or deleted; ``k`` from
  its id. The compartment types are :data:`COMPARTMENT` (the policy engine's, frozen here).

The ``resources`` shards of 0004 still move with every write (what a whole policy view reads).

Revision ID: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: Rows per set (the literal 16 in the trigger bodies below).
SHARDS = 16
#: Resource types in a patient's compartment (their ``patient`` index rows name the patient).
COMPARTMENT = ("Patient", "ImagingStudy", "DiagnosticReport", "CareTeam", "Consent", "RelatedPerson")
_OUTSIDE = "resource_type NOT IN (" + ", ".join(f"'{t}'" for t in ("AuditEvent", *COMPARTMENT)) + ")"
_NAMES = ("patients", "directory")
#: (suffix, event, the changed row whose values choose the shard)
_EVENTS = (("insert", "INSERT", "NEW"), ("update", "UPDATE", "NEW"), ("delete", "DELETE", "OLD"))
#: (trigger, event, table, the changed row, condition on it, counter set, column choosing the shard)
_TRIGGERS = (
    *(
        (f"generations_patient_index_{suffix}", event, "search_tokens", row, "token", "patients", "code")
        for suffix, event, row in _EVENTS
        if event != "UPDATE"  # index rows are deleted and inserted again, never updated
    ),
    *(
        (f"generations_{name}_{suffix}", event, "resources", row, condition, name, "id")
        for name, condition in (("patients", "patient"), ("directory", "outside"))
        for suffix, event, row in _EVENTS
    ),
)
_CONDITIONS = {
    "token": "{row}.param = 'patient' AND {row}.resource_type <> 'AuditEvent'",
    "patient": "{row}.resource_type = 'Patient'",
    "outside": "{row}." + _OUTSIDE,
}
#: SQLite trigger body (no functions there): ``@set``, ``@row`` and ``@column`` are filled in.
_SQLITE_BUMP = (
    "UPDATE generations SET value = value + 1 "
    "WHERE name = '@set.' || (coalesce(unicode(substr(@row.@column, -1)), 0) % 16);"
)
_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION imagebridge_bump_shard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed record;
    chosen text;
BEGIN
    IF TG_OP = 'DELETE' THEN changed := OLD; ELSE changed := NEW; END IF;
    IF TG_ARGV[1] = 'code' THEN chosen := changed.code; ELSE chosen := changed.id; END IF;
    UPDATE generations SET value = value + 1
        WHERE name = TG_ARGV[0] || '.' || (coalesce(ascii(right(chosen, 1)), 0) % 16);
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    bind = op.get_bind()
    generations = sa.table("generations", sa.column("name", sa.String), sa.column("value", sa.BigInteger))
    have = set(bind.execute(sa.select(generations.c.name)).scalars())
    wanted = [f"{name}.{k}" for name in _NAMES for k in range(SHARDS)]
    missing = [{"name": name, "value": 0} for name in wanted if name not in have]
    if missing:
        op.bulk_insert(generations, missing)
    postgres = bind.dialect.name == "postgresql"
    if postgres:
        op.execute(_PG_FUNCTION)
    for trigger, event, table, row, condition, name, column in _TRIGGERS:
        when = _CONDITIONS[condition].format(row=row)
        if postgres:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
            op.execute(
                f"CREATE TRIGGER {trigger} AFTER {event} ON {table} FOR EACH ROW WHEN ({when}) "
                f"EXECUTE FUNCTION imagebridge_bump_shard('{name}', '{column}')"
            )
        else:
            body = _SQLITE_BUMP.replace("@set", name).replace("@row", row).replace("@column", column)
            op.execute(
                f"CREATE TRIGGER IF NOT EXISTS {trigger} AFTER {event} ON {table} FOR EACH ROW WHEN {when} "
                f"BEGIN {body} END"
            )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for trigger, _, table, *_ in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}" + (f" ON {table}" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS imagebridge_bump_shard()")
    generations = sa.table("generations", sa.column("name", sa.String))
    for name in _NAMES:
        op.execute(generations.delete().where(generations.c.name.like(f"{name}.%")))
