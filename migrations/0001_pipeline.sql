-- The delivery pipeline: tenants, their per-channel messaging config, and the
-- delivery log.

CREATE TYPE channel AS ENUM ('email', 'sms', 'whatsapp');

-- processing and retrying are in-flight states; sent, failed and expired are final.
CREATE TYPE delivery_status AS ENUM ('processing', 'retrying', 'sent', 'failed', 'expired');

CREATE TYPE error_kind AS ENUM (
    'transient', 'rate_limited', 'provider', 'config',
    'recipient', 'content', 'invalid_job', 'expired'
);

CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per tenant and channel. A tenant without a row uses the system
-- default provider of that channel. The provider chain is JSON whose secret
-- fields are stored encrypted (see the tenant-config migration).
CREATE TABLE tenant_channel_configs (
    tenant_id           TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    channel             channel NOT NULL,
    enabled             BOOLEAN NOT NULL DEFAULT true,
    fallback_to_system  BOOLEAN NOT NULL DEFAULT true,
    chain               JSONB NOT NULL DEFAULT '[]',
    rate_limits         JSONB NOT NULL DEFAULT '{}',
    version             BIGINT NOT NULL DEFAULT 1,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel)
);

-- One row per job id (the idempotency key). Message bodies are not stored
-- unless delivery_log.store_content is on: they carry patient data.
CREATE TABLE outreach_logs (
    job_id               TEXT PRIMARY KEY,
    -- NULL only for an invalid job whose tenant or channel could not be read.
    tenant_id            TEXT,
    channel              channel,
    status               delivery_status NOT NULL,
    provider             TEXT,
    provider_message_id  TEXT,
    -- Position in the tenant's chain of the provider that sent (0 = primary).
    chain_step           SMALLINT,
    fallback_used        BOOLEAN NOT NULL DEFAULT false,
    -- Delivery attempts: rounds through the chain, counting broker retries.
    attempts             INTEGER NOT NULL DEFAULT 0,
    -- Every provider call: [{provider, step, kind, code, at}], appended to.
    attempt_log          JSONB NOT NULL DEFAULT '[]',
    error_kind           error_kind,
    error_code           TEXT,
    error_message        TEXT,
    -- While processing: the claim expires here (a redelivered copy waits).
    lease_until          TIMESTAMPTZ,
    -- When the current attempt will be retried (status retrying).
    retry_at             TIMESTAMPTZ,
    content              JSONB,
    metadata             JSONB,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at              TIMESTAMPTZ
);

CREATE INDEX outreach_logs_tenant_created ON outreach_logs (tenant_id, created_at);
CREATE INDEX outreach_logs_in_flight ON outreach_logs (status) WHERE status IN ('processing', 'retrying');
