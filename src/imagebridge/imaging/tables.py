"""The imaging system's index (SQLAlchemy Core): studies, series, instances, publishing, audit, leases.

The index holds what QIDO-RS matches and returns (PS3.18 §10.6.3.3 required attributes) and a
pointer to each instance's blob; the original bytes live only in the blob store.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

studies = Table(
    "studies",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("patient_id", String(64), nullable=False, default=""),
    Column("patient_name", String(324), nullable=False, default=""),
    Column("patient_birth_date", String(8), nullable=False, default=""),
    Column("patient_sex", String(16), nullable=False, default=""),
    Column("study_date", String(8), nullable=False, default=""),
    Column("study_time", String(16), nullable=False, default=""),
    Column("accession_number", String(16), nullable=False, default=""),
    Column("study_id", String(16), nullable=False, default=""),
    Column("study_description", String(64), nullable=False, default=""),
    Column("referring_physician_name", String(324), nullable=False, default=""),
    # QIDO-RS fuzzy person-name matching keys (dicomweb/qido_match.fold_person_name)
    Column("patient_name_fold", String(400), nullable=False, default=""),
    Column("referring_physician_name_fold", String(400), nullable=False, default=""),
    Column("study_json", LargeBinary, nullable=False),  # study-level attributes as DICOM JSON
    Column("updated_at", Float, nullable=False),
)
Index("ix_studies_patient_id", studies.c.patient_id)
Index("ix_studies_study_date", studies.c.study_date)
Index("ix_studies_qido_order", studies.c.study_date, studies.c.study_time, studies.c.study_uid)
Index("ix_studies_accession_number", studies.c.accession_number)

series = Table(
    "series",
    metadata,
    Column("series_uid", String(64), primary_key=True),
    Column("study_uid", String(64), ForeignKey("studies.study_uid"), nullable=False, index=True),
    Column("modality", String(16), nullable=False, default=""),
    Column("series_number", Integer),
    Column("series_description", String(64), nullable=False, default=""),
    Column("performed_start_date", String(8), nullable=False, default=""),
    Column("performed_start_time", String(16), nullable=False, default=""),
    Column("series_json", LargeBinary, nullable=False),
)
Index("ix_series_study_modality", series.c.study_uid, series.c.modality)

#: Request Attributes Sequence items of a series (QIDO-RS sequence matching, PS3.4 C.2.2.2.6).
series_requests = Table(
    "series_requests",
    metadata,
    Column("series_uid", String(64), ForeignKey("series.series_uid"), nullable=False, index=True),
    Column("scheduled_procedure_step_id", String(16), nullable=False, default=""),
    Column("requested_procedure_id", String(16), nullable=False, default=""),
)

instances = Table(
    "instances",
    metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("series_uid", String(64), ForeignKey("series.series_uid"), nullable=False, index=True),
    Column("study_uid", String(64), ForeignKey("studies.study_uid"), nullable=False, index=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("number_of_frames", Integer),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("blob_key", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("metadata_json", LargeBinary, nullable=False),  # instance DICOM JSON with BulkDataURI templates
    Column("created_at", Float, nullable=False),
)
Index("ix_instances_blob_key", instances.c.blob_key)  # orphan sweep (archive/sweep.py)

publish_queue = Table(
    "publish_queue",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("queued_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    # Until when a worker publishing the study holds it (publish.py Publisher.publish_pending).
    Column("leased_until", Float),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("client_id", String(200)),
    Column("user", String(300)),
    Column("patient", String(200)),
    Column("token_id", String(32)),
    Column("operation", String(40), nullable=False),
    Column("study_uid", String(64)),
    Column("series_uid", String(64)),
    Column("sop_uid", String(64)),
    Column("outcome", String(20), nullable=False),
    Column("status", Integer, nullable=False),
    Column("detail", Text),
    Column("bytes_sent", BigInteger, nullable=False, default=0),
    Column("request_path", String(400)),
    # Milliseconds from the request reaching the gate to this record being written (FT-01/FT-02).
    Column("elapsed_ms", Float),
    # True while a streamed body is still being sent (bytes_sent is final once it is False).
    Column("streaming", Boolean, nullable=False, default=False, server_default=false()),
    # Delivered to the EHR as an AuditEvent (gate/audit_publish.py): the spool is the unpublished rows.
    Column("published", Boolean, nullable=False, default=False, server_default=false()),
    # The record's key in the audit journal (common/audit_journal.py): replay inserts it once.
    Column("record_key", String(32)),
)
Index("ix_audit_at", audit.c.at)
Index("ux_audit_record_key", audit.c.record_key, unique=True)
Index("ix_audit_patient", audit.c.patient)
Index("ix_audit_published", audit.c.published, audit.c.id)

#: Named leases with an expiry: one holder at a time among workers sharing the database.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("until", Float, nullable=False),
)
