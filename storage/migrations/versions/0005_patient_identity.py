"""patient identity: a study row per (Study Instance UID, patient), a series row per
(Series Instance UID, study row); ingest_conflict for what contradicted the archive

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:30:00

Existing rows keep their ids: each UID had one row, so the new, wider unique keys hold.
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# SQLite keeps the old unique constraints unnamed; in batch mode they get these names.
_SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_unique(table: str, column: str) -> str:
    if op.get_bind().dialect.name == "sqlite":
        return f"uq_{table}_{column}"
    return f"{table}_{column}_key"  # PostgreSQL's name for an unnamed unique constraint


def upgrade() -> None:
    for table, column, parent, name in (
            ("study", "study_instance_uid", "patient_fk", "uq_study_identity"),
            ("series", "series_instance_uid", "study_fk", "uq_series_identity")):
        with op.batch_alter_table(table, naming_convention=_SQLITE_NAMES) as batch_op:
            batch_op.drop_constraint(_old_unique(table, column), type_="unique")
            batch_op.create_unique_constraint(name, [column, parent])

    op.create_table('ingest_conflict',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('rule', sa.String(length=32), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sent_patient_id', sa.String(length=64), nullable=False),
    sa.Column('sent_issuer', sa.String(length=64), nullable=False),
    sa.Column('archived_patient_id', sa.String(length=64), nullable=True),
    sa.Column('archived_issuer', sa.String(length=64), nullable=True),
    sa.Column('source_aet', sa.String(length=16), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('ingest_conflict', schema=None) as batch_op:
        batch_op.create_index('ix_ingest_conflict_rule_at', ['rule', 'at'], unique=False)


def downgrade() -> None:
    op.drop_table('ingest_conflict')
    for table, column, name in (("series", "series_instance_uid", "uq_series_identity"),
                                ("study", "study_instance_uid", "uq_study_identity")):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(name, type_="unique")
            batch_op.create_unique_constraint(_old_unique(table, column), [column])
