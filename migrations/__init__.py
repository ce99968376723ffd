"""Alembic migrations for a cbir library; installed as the package ``cbir.migrations``."""
