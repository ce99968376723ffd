"""texts (captions, descriptions, labels) with FTS5 keyword index; filterable image columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Adds ``images.taken`` (date taken, else the file's local modification time) and indexes on the
columns search filters use, and the ``texts`` table with its FTS5 index ``texts_fts``, kept in
step with ``texts`` by triggers. ``images`` is altered in place, never copied: a copy would drop
the table that ``vectors`` cascades from.

On PostgreSQL the keyword index is a GIN index over ``to_tsvector('english', ...)`` of each
text (Snowball English stemming, like FTS5's porter), with accents folded by ``unaccent``
where that extension can be created; ``cbir_fts_text`` wraps it, since an index expression
must be immutable.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FTS_TRIGGERS = {
    "texts_ai": """CREATE TRIGGER texts_ai AFTER INSERT ON texts BEGIN
        INSERT INTO texts_fts(rowid, content) VALUES (new.id, new.content);
    END""",
    "texts_ad": """CREATE TRIGGER texts_ad AFTER DELETE ON texts BEGIN
        INSERT INTO texts_fts(texts_fts, rowid, content) VALUES ('delete', old.id, old.content);
    END""",
    "texts_au": """CREATE TRIGGER texts_au AFTER UPDATE OF content ON texts BEGIN
        INSERT INTO texts_fts(texts_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO texts_fts(rowid, content) VALUES (new.id, new.content);
    END""",
}


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.add_column("images", sa.Column("taken", sa.DateTime(), nullable=True))
    if _postgresql():
        # The server's local time (SQLite uses the machine's); images exist here only in a
        # catalogue downgraded and upgraded again, as a new one is created at the head.
        op.execute("UPDATE images SET taken = coalesce(taken_at, to_timestamp(mtime_ns / 1000000000)::timestamp)")
    else:
        op.execute(
            "UPDATE images SET taken = coalesce(taken_at, "
            "strftime('%Y-%m-%d %H:%M:%S', mtime_ns / 1000000000, 'unixepoch', 'localtime') || '.000000')"
        )
    for column in ("taken", "width", "height", "added_at"):
        op.create_index(f"ix_images_{column}", "images", [column])
    op.create_table(
        "texts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("origin_size", sa.BigInteger(), nullable=True),
        sa.Column("origin_mtime_ns", sa.BigInteger(), nullable=True),
        sa.Column("added_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("image_id", "source", "content"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_texts_image_id", "texts", ["image_id"])
    op.create_index("ix_texts_source", "texts", ["source"])
    if _postgresql():
        _create_postgresql_fts()
        return
    # Porter stemming over unicode61 (diacritics folded): "dogs" finds "dog", "café" finds "cafe".
    op.execute(
        "CREATE VIRTUAL TABLE texts_fts USING fts5(content, content='texts', content_rowid='id', "
        "tokenize='porter unicode61 remove_diacritics 2')"
    )
    for ddl in FTS_TRIGGERS.values():
        op.execute(ddl)


def _create_postgresql_fts() -> None:
    bind = op.get_bind()
    schema = None
    if bind.exec_driver_sql("SELECT 1 FROM pg_available_extensions WHERE name = 'unaccent'").first():
        try:
            with bind.begin_nested():  # a user who may not create it: go on without it
                bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS unaccent")
        except sa.exc.DBAPIError:
            pass
        schema = bind.exec_driver_sql(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'unaccent'"
        ).scalar()
    # unaccent(regdictionary, text) is only stable; with its dictionary named, schema-qualified,
    # it gives the same result every time, which the immutable wrapper promises.
    body = f"{schema}.unaccent('{schema}.unaccent'::regdictionary, $1)" if schema else "$1"
    op.execute(
        "CREATE FUNCTION cbir_fts_text(text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE "
        f"AS $$ SELECT {body} $$"
    )
    op.execute("CREATE INDEX texts_fts ON texts USING gin (to_tsvector('english'::regconfig, cbir_fts_text(content)))")


def downgrade() -> None:
    if _postgresql():
        op.execute("DROP INDEX IF EXISTS texts_fts")
        op.execute("DROP FUNCTION IF EXISTS cbir_fts_text(text)")
        _downgrade_tables()
        return
    for name in FTS_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS texts_fts")
    _downgrade_tables()


def _downgrade_tables() -> None:
    op.drop_table("texts")
    for column in ("taken", "width", "height", "added_at"):
        op.drop_index(f"ix_images_{column}", "images")
    op.drop_column("images", "taken")
