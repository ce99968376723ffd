"""images from datasets: which dataset added an image, and its extra metadata

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

``images.dataset`` names the dataset that added an image (``manifest:train.csv``,
``tar:shards/00001.tar``; NULL for a folder scan): a folder scan never removes a dataset's
images, and a dataset's rows that are gone are removed on its next ingest. ``images.extra``
keeps a manifest row's other columns (or a WebDataset sample's .json) as a JSON object, for
filters. Columns are added in place (see 0002 for why the table is never copied).
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("dataset", sa.String(300), nullable=True))
    op.add_column("images", sa.Column("extra", sa.Text(), nullable=True))
    op.create_index("ix_images_dataset", "images", ["dataset"])


def downgrade() -> None:
    op.drop_index("ix_images_dataset", "images")
    op.drop_column("images", "extra")
    op.drop_column("images", "dataset")
