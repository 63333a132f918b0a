"""security: token expiry, last use and rotation; the audit trail of DICOM accesses (calling
AE title, TLS identity, studies and instances touched) and its export to an ATNA collector

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 21:00:00

Audit records already there are HTTP ones (`protocol` defaults to http) and not yet
exported: a collector configured later receives the whole trail.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

UNEXPORTED = 'exported_at IS NULL'


def upgrade() -> None:
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_used_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('replaced_by', sa.String(length=32), nullable=True))

    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.add_column(sa.Column('protocol', sa.String(length=8), server_default='http',
                                      nullable=False))
        batch_op.add_column(sa.Column('calling_aet', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('tls_identity', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('studies', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('instances', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('exported_at', sa.DateTime(timezone=True),
                                      nullable=True))
        # a DIMSE status (0xC001...) does not fit a SMALLINT; "A-ASSOCIATE-RJ" not 8 characters
        batch_op.alter_column('method', existing_type=sa.String(length=8),
                              type_=sa.String(length=16), existing_nullable=False)
        batch_op.alter_column('status', existing_type=sa.SmallInteger(), type_=sa.Integer(),
                              existing_nullable=False)
        batch_op.create_index('ix_audit_event_unexported', ['id'], unique=False,
                              sqlite_where=sa.text(UNEXPORTED),
                              postgresql_where=sa.text(UNEXPORTED))


def downgrade() -> None:
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_event_unexported')
        for column in ('exported_at', 'instances', 'studies', 'tls_identity', 'calling_aet',
                       'protocol'):
            batch_op.drop_column(column)
        batch_op.alter_column('status', existing_type=sa.Integer(), type_=sa.SmallInteger(),
                              existing_nullable=False)
        batch_op.alter_column('method', existing_type=sa.String(length=16),
                              type_=sa.String(length=8), existing_nullable=False)
    with op.batch_alter_table('api_token', schema=None) as batch_op:
        for column in ('replaced_by', 'last_used_at', 'expires_at'):
            batch_op.drop_column(column)
