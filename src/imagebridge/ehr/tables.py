"""The EHR's relational schema (SQLAlchemy Core): clients, tokens, keys and FHIR documents.

FHIR resources are stored as JSON documents with their search parameters extracted into
index rows (``search_tokens``, ``search_dates``), so searches are indexed on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

clients = Table(
    "clients",
    metadata,
    Column("client_id", String(200), primary_key=True),
    Column("kind", String(20), nullable=False),  # backend | public | confidential
    Column("name", String(200), nullable=False, default=""),
    Column("scope", Text, nullable=False, default=""),  # the most this client may ever be granted
    Column("jwks", Text),  # inline JWK Set (JSON)
    Column("jwks_uri", Text),
    Column("redirect_uris", Text, nullable=False, default="[]"),  # JSON list
    Column("launch_url", Text),
    Column("group_ref", String(200)),  # Group/<id> a backend client may reach
    Column("zero_click", Boolean, nullable=False, default=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
    # SHA-256 of the RFC 7592 registration access token (dynamically registered apps only).
    Column("registration_token", String(64)),
    # A registered imaging source (modality, archive feed): stores imaging for any PatientID (0006).
    Column("imaging_source", Boolean, nullable=False, default=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("digest", String(64), primary_key=True),  # SHA-256 of the opaque token
    Column("kind", String(10), nullable=False),  # access | refresh
    Column("client_id", String(200), nullable=False, index=True),
    Column("scope", Text, nullable=False),
    Column("patient", String(200)),
    Column("fhir_user", String(300)),
    Column("sub", String(300)),
    Column("family", String(64), index=True),  # grant family: refresh rotation and revocation
    Column("context", Text, nullable=False, default="{}"),  # other launch context (JSON)
    Column("session", String(64), index=True),  # online_access: the EHR sign-in it lives with
    Column("issued_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
)

assertion_jtis = Table(
    "assertion_jtis",
    metadata,
    Column("key", String(600), primary_key=True),  # iss + jti
    Column("expires_at", Float, nullable=False, index=True),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", String(100), primary_key=True),
    Column("private_jwk", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("retired_at", Float),
)

resources = Table(
    "resources",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("last_updated", String(40), nullable=False),  # FHIR instant, UTC
    Column("content", Text, nullable=False),
)
Index("ix_resources_type_updated", resources.c.resource_type, resources.c.last_updated)

search_tokens = Table(
    "search_tokens",
    metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(300), nullable=False, default=""),
    Column("code", String(500), nullable=False),
)
Index("ix_search_tokens_lookup", search_tokens.c.resource_type, search_tokens.c.param, search_tokens.c.code)
Index("ix_search_tokens_owner", search_tokens.c.resource_type, search_tokens.c.id)

search_dates = Table(
    "search_dates",
    metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("low", String(40), nullable=False),  # inclusive, normalised UTC instant
    Column("high", String(40), nullable=False),
)
Index("ix_search_dates_lookup", search_dates.c.resource_type, search_dates.c.param, search_dates.c.low)
Index("ix_search_dates_owner", search_dates.c.resource_type, search_dates.c.id)

# Bulk Data export jobs (FHIR Bulk Data STU2 "Export"): durable, so a restart resumes them.
bulk_jobs = Table(
    "bulk_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("client_id", String(200), nullable=False, index=True),
    Column("principal", Text, nullable=False),  # JSON: the authorization the export runs under
    Column("request", Text, nullable=False),  # the kick-off URL
    Column("params", Text, nullable=False),  # JSON: types, since, group
    Column("status", String(20), nullable=False),  # accepted | running | done | failed | cancelled
    Column("progress", String(100), nullable=False, default=""),
    Column("transaction_time", String(40), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("error", Text),
)

bulk_files = Table(
    "bulk_files",
    metadata,
    Column("job_id", String(64), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("resource_type", String(64), nullable=False),
    Column("count", Integer, nullable=False),
    Column("content", Text, nullable=False),  # NDJSON
)

# SMART App Launch (issue 3): people who sign in, browser sessions, pending authorizations,
# authorization codes and EHR-launch handles. Codes, handles and session ids are stored as digests.
users = Table(
    "users",
    metadata,
    Column("username", String(100), primary_key=True),
    Column("password_hash", Text, nullable=False),  # argon2id
    Column("fhir_user", String(300), nullable=False),  # Patient/…, RelatedPerson/…, Practitioner/…
    Column("display_name", String(200), nullable=False, default=""),
    Column("roles", String(200), nullable=False, default=""),  # space-separated: patient proxy clinician
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", Float, nullable=False),
)

browser_sessions = Table(
    "browser_sessions",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("username", String(100)),  # None until the user signs in
    Column("csrf", String(64), nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)

auth_requests = Table(
    "auth_requests",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("session", String(64), nullable=False, index=True),  # browser_sessions.digest
    Column("client_id", String(200), nullable=False),
    Column("params", Text, nullable=False),  # JSON: redirect_uri, state, scope, challenge, nonce, launch
    Column("patient", String(200)),  # chosen or launched patient
    Column("expires_at", Float, nullable=False),
)

auth_codes = Table(
    "auth_codes",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("client_id", String(200), nullable=False),
    Column("grant", Text, nullable=False),  # JSON: redirect_uri, challenge, scope, patient, user, nonce
    Column("family", String(64), nullable=False),  # tokens issued from this code
    Column("expires_at", Float, nullable=False),
    Column("used", Boolean, nullable=False, default=False),
)

launches = Table(
    "launches",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("session", String(64), nullable=False),
    Column("client_id", String(200), nullable=False),
    Column("patient", String(200), nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("used", Boolean, nullable=False, default=False),
)

# Change counters (migration 0003), each bumped by a database trigger in the transaction of every
# change it stands for, so that every worker notices at its next read (see ehr/smart/memo.py):
# ``credentials`` (a token or a client registration updated or deleted) and ``resources`` (a FHIR
# resource other than an AuditEvent written or deleted; migration 0004 spreads it over the rows
# ``resources.0`` … ``resources.15`` by resource id, read as their sum). Migration 0005 adds
# ``patients.<k>`` (a patient's compartment written) and ``directory.<k>`` (data outside every
# compartment written), which decide how long a patient's imaging grant is kept; migration 0007
# ``clients`` (a client registration added, changed or removed).
generations = Table(
    "generations",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", BigInteger, nullable=False, default=0),
)
