"""Alembic environment for the imaging schema."""

from alembic import context

from imagebridge.common.db import run_migrations_online
from imagebridge.imaging.tables import metadata

run_migrations_online(context.config.get_main_option("sqlalchemy.url") or "", metadata)
