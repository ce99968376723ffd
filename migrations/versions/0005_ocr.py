"""OCR: which images have had the text inside them read

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

``images.ocr_engine`` names the OCR engine that read an image (its texts of source ``ocr``, none
when it holds no text); NULL while it has not been read. It is set in the transaction that writes
those texts, so an OCR pass over a library's images, stopped at any moment, resumes with the
images it had not reached. The column is added in place (see 0002 for why a table is never
copied).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("ocr_engine", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("images", "ocr_engine")
