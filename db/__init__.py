"""The schema: models, engine and sessions, Alembic migrations."""
