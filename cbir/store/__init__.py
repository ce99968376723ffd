"""Metadata and vectors in SQL (SQLite by default) through SQLAlchemy 2; schema via Alembic only."""
