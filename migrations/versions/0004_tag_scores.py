"""tag scores: how strongly the model assigns a tag to an image

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

``texts.score`` holds, for a text of source ``tag`` written by ``cbir tag``, the zero-shot
probability of that tag over the vocabulary it was chosen from; NULL for every other text
(captions, descriptions, the user's labels). The column is added in place (see 0002 for why a
table is never copied).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("texts", sa.Column("score", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("texts", "score")
