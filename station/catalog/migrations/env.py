"""Alembic environment: run against the connection the Catalog hands over."""

from alembic import context
from sqlalchemy import create_engine

from station.catalog.models import Base

target_metadata = Base.metadata
config = context.config

connection = config.attributes.get("connection")
if connection is None:  # `alembic` command line: use the URL from its ini
    connection = create_engine(config.get_main_option("sqlalchemy.url")).connect()

context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
