"""The ``billing`` command line and the embedded PostgreSQL/Redis it can start."""
