"""orders and the modality workflow: patient_alias (merges, changed IDs), hl7_message,
imaging_order (the worklist), performed_procedure_step (MPPS), storage_commitment,
study_report (ORU final results)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 19:44:40.234011
"""
import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('hl7_message',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('peer', sa.String(length=64), nullable=True),
    sa.Column('sending_application', sa.String(length=64), nullable=True),
    sa.Column('sending_facility', sa.String(length=64), nullable=True),
    sa.Column('message_type', sa.String(length=16), nullable=True),
    sa.Column('control_id', sa.String(length=64), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('ack_code', sa.String(length=2), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('hl7_message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hl7_message_patient_id'), ['patient_id'], unique=False)
        batch_op.create_index('ix_hl7_message_received', ['received_at'], unique=False)

    op.create_table('storage_commitment',
    sa.Column('transaction_uid', sa.String(length=64), nullable=False),
    sa.Column('requester_aet', sa.String(length=16), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('referenced', sa.JSON(), nullable=False),
    sa.Column('committed', sa.JSON(), nullable=True),
    sa.Column('failed', sa.JSON(), nullable=True),
    sa.Column('attempts', sa.SmallInteger(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reported_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('transaction_uid')
    )
    with op.batch_alter_table('storage_commitment', schema=None) as batch_op:
        batch_op.create_index('ix_storage_commitment_due', ['reported_at', 'next_attempt_at'], unique=False)

    op.create_table('study_report',
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('reported_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('result_status', sa.String(length=2), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('hl7_message_fk', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('accession_number')
    )
    with op.batch_alter_table('study_report', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_report_reported_at'), ['reported_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_report_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('imaging_order',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_fk', sa.Integer(), nullable=False),
    sa.Column('placer_order_number', sa.String(length=64), nullable=True),
    sa.Column('filler_order_number', sa.String(length=64), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('requested_procedure_id', sa.String(length=16), nullable=False),
    sa.Column('requested_procedure_description', sa.String(length=64), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('scheduled_procedure_step_id', sa.String(length=16), nullable=False),
    sa.Column('scheduled_procedure_step_description', sa.String(length=64), nullable=True),
    sa.Column('scheduled_station_aet', sa.String(length=16), nullable=True),
    sa.Column('scheduled_station_name', sa.String(length=16), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('scheduled_date', sa.String(length=8), nullable=False),
    sa.Column('scheduled_time', sa.String(length=16), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('scheduled_performing_physician_name', sa.String(length=324), nullable=True),
    sa.Column('referring_physician_name', sa.String(length=324), nullable=True),
    sa.Column('requesting_physician_name', sa.String(length=324), nullable=True),
    sa.Column('department', sa.String(length=64), nullable=True),
    sa.Column('priority', sa.String(length=16), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('referral_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('placed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_fk'], ['patient.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('accession_number'),
    sa.UniqueConstraint('study_instance_uid')
    )
    with op.batch_alter_table('imaging_order', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_imaging_order_modality'), ['modality'], unique=False)
        batch_op.create_index(batch_op.f('ix_imaging_order_patient_fk'), ['patient_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_imaging_order_placer_order_number'), ['placer_order_number'], unique=False)
        batch_op.create_index('ix_imaging_order_station', ['scheduled_station_aet', 'scheduled_date'], unique=False)
        batch_op.create_index('ix_imaging_order_worklist', ['status', 'scheduled_date', 'scheduled_time'], unique=False)

    op.create_table('patient_alias',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer_of_patient_id', sa.String(length=64), server_default='', nullable=False),
    sa.Column('survivor_fk', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('hl7_message_fk', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['survivor_fk'], ['patient.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('patient_id', 'issuer_of_patient_id', name='uq_patient_alias_identity')
    )
    with op.batch_alter_table('patient_alias', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patient_alias_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_patient_alias_survivor_fk'), ['survivor_fk'], unique=False)

    op.create_table('performed_procedure_step',
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('order_fk', sa.Integer(), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=True),
    sa.Column('patient_id', sa.String(length=64), nullable=True),
    sa.Column('issuer_of_patient_id', sa.String(length=64), server_default='', nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('station_aet', sa.String(length=16), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('performed_series', sa.JSON(), nullable=False),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_fk'], ['imaging_order.id'], ),
    sa.PrimaryKeyConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('performed_procedure_step', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_performed_procedure_step_order_fk'), ['order_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_performed_procedure_step_study_instance_uid'), ['study_instance_uid'], unique=False)
        batch_op.create_index('ix_pps_started', ['started_at'], unique=False)

    _study_fact_chain_columns()




def _study_fact_chain_columns() -> None:
    """What the lead-time chain needs of a study beyond 0004's facts: when its last instance
    arrived, its department, the AE that sent it and its accession number; filled for the
    studies there are from the index (the workers keep them from now on)."""
    with op.batch_alter_table('study_fact', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_received_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('department', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('source_aet', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('accession_number', sa.String(length=64), nullable=True))
    of_study = (" FROM instance i JOIN series se ON i.series_fk = se.id"
                " JOIN study st ON se.study_fk = st.id"
                " WHERE st.study_instance_uid = study_fact.study_instance_uid")
    op.get_bind().execute(sa.text(
        "UPDATE study_fact SET"
        " last_received_at = (SELECT max(i.received_at)" + of_study + "),"
        " department = (SELECT max(NULLIF(se.institutional_department_name, ''))" + of_study + "),"
        " source_aet = (SELECT min(NULLIF(i.source_aet, ''))" + of_study + "),"
        " accession_number = (SELECT max(NULLIF(st.accession_number, ''))" + of_study + ")"))


def downgrade() -> None:
    with op.batch_alter_table('study_fact', schema=None) as batch_op:
        batch_op.drop_column('accession_number')
        batch_op.drop_column('source_aet')
        batch_op.drop_column('department')
        batch_op.drop_column('last_received_at')
    with op.batch_alter_table('performed_procedure_step', schema=None) as batch_op:
        batch_op.drop_index('ix_pps_started')
        batch_op.drop_index(batch_op.f('ix_performed_procedure_step_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_performed_procedure_step_order_fk'))

    op.drop_table('performed_procedure_step')
    with op.batch_alter_table('patient_alias', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_alias_survivor_fk'))
        batch_op.drop_index(batch_op.f('ix_patient_alias_at'))

    op.drop_table('patient_alias')
    with op.batch_alter_table('imaging_order', schema=None) as batch_op:
        batch_op.drop_index('ix_imaging_order_worklist')
        batch_op.drop_index('ix_imaging_order_station')
        batch_op.drop_index(batch_op.f('ix_imaging_order_placer_order_number'))
        batch_op.drop_index(batch_op.f('ix_imaging_order_patient_fk'))
        batch_op.drop_index(batch_op.f('ix_imaging_order_modality'))

    op.drop_table('imaging_order')
    with op.batch_alter_table('study_report', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_report_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_study_report_reported_at'))

    op.drop_table('study_report')
    with op.batch_alter_table('storage_commitment', schema=None) as batch_op:
        batch_op.drop_index('ix_storage_commitment_due')

    op.drop_table('storage_commitment')
    with op.batch_alter_table('hl7_message', schema=None) as batch_op:
        batch_op.drop_index('ix_hl7_message_received')
        batch_op.drop_index(batch_op.f('ix_hl7_message_patient_id'))

    op.drop_table('hl7_message')

