"""Run the Alembic migrations programmatically (``billing migrate``, tests)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from alembic import command
from alembic.config import Config

from db.partitions import is_partition

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config for ``database_url`` that needs no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's filter: autogenerate compares the tables of the models, not the monthly
    partitions of the logs (``db.partitions``) or their indexes, which are made at run time."""
    table = name if type_ == "table" else parent_names.get("table_name")
    return table is None or not is_partition(table)


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the schema of ``database_url`` to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the schema of ``database_url`` to ``revision``."""
    command.downgrade(alembic_config(database_url), revision)
