"""lead-time facts: arrival delay per instance, exam and names per study, arrival histogram

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 09:20:00

Fills the new columns and tables from the instance facts already derived, so lead times
and quality findings of earlier periods stay as they were.
"""
import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_BATCH = 10_000

# Frozen copies of what this revision was written with (storage.index.models.UTCDateTime,
# vna.leadtimes.arrival_bin as of 0004): a later change of the live code must not change
# what an old migration does to a database that is only now catching up.
_LINEAR_SECONDS = 128
_BINS_PER_DOUBLING = 64


def arrival_bin(seconds: float) -> int:
    """The histogram bin of an arrival delay in seconds."""
    if seconds < 0:
        return -1 - arrival_bin(-seconds)
    if seconds < _LINEAR_SECONDS:
        return int(seconds)
    return _LINEAR_SECONDS + int(_BINS_PER_DOUBLING * math.log2(seconds / _LINEAR_SECONDS))


class UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC in and out (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return _utc(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return _utc(value)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def upgrade() -> None:
    with op.batch_alter_table('instance_fact', schema=None) as batch_op:
        batch_op.add_column(sa.Column('arrival_seconds', sa.Float(), nullable=True))
        batch_op.create_index('ix_instance_fact_late', ['received_at'], unique=False,
                              sqlite_where=sa.text('arrival_seconds > 86400'),
                              postgresql_where=sa.text('arrival_seconds > 86400'))

    op.create_table('study_fact',
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('pps_start', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pps_end', sa.DateTime(timezone=True), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=True),
    sa.Column('several_names', sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint('study_instance_uid')
    )
    with op.batch_alter_table('study_fact', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_fact_first_received_at'),
                              ['first_received_at'], unique=False)

    op.create_table('stats_arrival_hourly',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('hour', sa.DateTime(timezone=True), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('bin', sa.Integer(), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('hour', 'modality', 'bin', name='uq_stats_arrival_hourly_key')
    )
    _backfill()


def _backfill() -> None:
    conn = op.get_bind()
    fact = sa.table('instance_fact', sa.column('sop_instance_uid', sa.String),
                    sa.column('study_instance_uid', sa.String),
                    sa.column('modality', sa.String),
                    sa.column('received_at', UTCDateTime()),
                    sa.column('acquired_at', UTCDateTime()),
                    sa.column('pps_start', UTCDateTime()), sa.column('pps_end', UTCDateTime()),
                    sa.column('arrival_seconds', sa.Float))
    conn.execute(sa.text(
        "INSERT INTO study_fact (study_instance_uid, modality, first_received_at, pps_start,"
        " pps_end, patient_id, patient_name, several_names) SELECT study_instance_uid,"
        " min(modality), min(received_at), min(pps_start), max(pps_end), min(patient_id),"
        " min(patient_name), count(DISTINCT patient_name) > 1"
        " FROM instance_fact GROUP BY study_instance_uid"))
    histogram: Counter[tuple[object, str, int]] = Counter()
    set_delay = (sa.update(fact).where(fact.c.sop_instance_uid == sa.bindparam('uid'))
                 .values(arrival_seconds=sa.bindparam('seconds')))
    last = ''
    while True:
        rows = conn.execute(sa.select(fact.c.sop_instance_uid, fact.c.modality,
                                      fact.c.received_at, fact.c.acquired_at)
                            .where(fact.c.sop_instance_uid > last,
                                   fact.c.acquired_at.isnot(None))
                            .order_by(fact.c.sop_instance_uid).limit(_BATCH)).all()
        if not rows:
            break
        updates = []
        for uid, modality, received, acquired in rows:
            seconds = (received - acquired).total_seconds()
            updates.append({'uid': uid, 'seconds': seconds})
            hour = received.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            histogram[(hour, modality or '', arrival_bin(seconds))] += 1
        conn.execute(set_delay, updates)
        last = rows[-1][0]
    rollup = sa.table('stats_arrival_hourly', sa.column('hour', UTCDateTime()),
                      sa.column('modality', sa.String), sa.column('bin', sa.Integer),
                      sa.column('count', sa.BigInteger))
    if histogram:
        conn.execute(sa.insert(rollup), [
            {'hour': hour, 'modality': modality, 'bin': b, 'count': n}
            for (hour, modality, b), n in histogram.items()])


def downgrade() -> None:
    op.drop_table('stats_arrival_hourly')
    with op.batch_alter_table('study_fact', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_fact_first_received_at'))
    op.drop_table('study_fact')
    with op.batch_alter_table('instance_fact', schema=None) as batch_op:
        batch_op.drop_index('ix_instance_fact_late')
        batch_op.drop_column('arrival_seconds')
