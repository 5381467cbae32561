-- Tenant messaging config management: room for quiet hours and time zone,
-- and an audit trail of every change.

-- Stored now, enforced later (the scheduler will read them).
ALTER TABLE tenant_channel_configs
    ADD COLUMN quiet_hours JSONB,
    ADD COLUMN time_zone   TEXT;

-- Who changed which tenant's config, and which fields. Field names only:
-- values (credentials among them) never reach this table.
CREATE TABLE config_audit (
    id              BIGSERIAL PRIMARY KEY,
    at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- "cli:<user>" or "api:<token name>".
    actor           TEXT NOT NULL,
    tenant_id       TEXT NOT NULL,
    -- NULL when a whole tenant was deleted.
    channel         channel,
    -- put, delete or rotate.
    action          TEXT NOT NULL,
    changed_fields  TEXT[] NOT NULL DEFAULT '{}'
);

CREATE INDEX config_audit_tenant_at ON config_audit (tenant_id, at);
