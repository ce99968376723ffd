"""Media: PDF pages and video frames as images of the library

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

A page of a PDF or a frame of a video is an image row whose path names it inside its file
(``report.pdf#page=3``, ``clip.mp4#t=12.5``). ``images.container_hash`` is the SHA-256 of that
whole file, on each of its pages or frames (NULL for every other image): the rows of one file are
found, moved and copied together by it. ``images.duration`` is a video's length in seconds, on
each of its frames, for filters (NULL for other images). Both columns are added in place (see 0002
for why a table is never copied).
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("container_hash", sa.String(length=64), nullable=True))
    op.add_column("images", sa.Column("duration", sa.Float(), nullable=True))
    op.create_index("ix_images_container_hash", "images", ["container_hash"])
    op.create_index("ix_images_duration", "images", ["duration"])


def downgrade() -> None:
    op.drop_index("ix_images_duration", "images")
    op.drop_index("ix_images_container_hash", "images")
    op.drop_column("images", "duration")
    op.drop_column("images", "container_hash")
