-- Delivery feedback: what providers report after `sent` (status webhooks),
-- every provider event kept, and per-tenant suppression lists.

-- Statuses after `sent`, reported by the provider's webhooks (they only move
-- forward, see src/feedback/status.rs), and `suppressed`: a job to a
-- recipient on its tenant's suppression list, ended before any provider call.
ALTER TYPE delivery_status ADD VALUE IF NOT EXISTS 'delivered';
ALTER TYPE delivery_status ADD VALUE IF NOT EXISTS 'undelivered';
ALTER TYPE delivery_status ADD VALUE IF NOT EXISTS 'bounced';
ALTER TYPE delivery_status ADD VALUE IF NOT EXISTS 'complained';
ALTER TYPE delivery_status ADD VALUE IF NOT EXISTS 'opened';
ALTER TYPE delivery_status ADD VALUE IF NOT EXISTS 'clicked';
ALTER TYPE delivery_status ADD VALUE IF NOT EXISTS 'read';
ALTER TYPE delivery_status ADD VALUE IF NOT EXISTS 'unsubscribed';
ALTER TYPE delivery_status ADD VALUE IF NOT EXISTS 'suppressed';

-- Webhooks find a job's row by the id its provider gave the message.
CREATE INDEX outreach_logs_provider_message ON outreach_logs (tenant_id, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Every verified provider event, applied or not, so a row's timeline can be
-- shown. `event_key` identifies one provider event (SendGrid's sg_event_id,
-- Twilio's message sid + status, Meta's wamid + status + timestamp): a
-- provider's redelivery of the same event is recognised and does nothing.
CREATE TABLE provider_events (
    id                   BIGSERIAL PRIMARY KEY,
    tenant_id            TEXT NOT NULL,
    provider             TEXT NOT NULL,
    event_key            TEXT NOT NULL,
    provider_message_id  TEXT,
    -- The row it was matched to; NULL for an unknown message id.
    job_id               TEXT,
    -- The provider's own word (`dropped`, `undelivered`, `read`...).
    raw_status           TEXT NOT NULL,
    -- What it maps to; NULL for statuses that change nothing (`deferred`, `queued`).
    status               delivery_status,
    -- The provider's error code (Twilio ErrorCode, SMTP status of a bounce).
    error_code           TEXT,
    -- Whether it moved the row's status forward.
    applied              BOOLEAN NOT NULL DEFAULT false,
    occurred_at          TIMESTAMPTZ NOT NULL,
    received_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, provider, event_key)
);

CREATE INDEX provider_events_job ON provider_events (tenant_id, job_id, occurred_at);
-- Events that came before their send was recorded, for the reconciler to match.
CREATE INDEX provider_events_unmatched ON provider_events (received_at) WHERE job_id IS NULL;

-- Recipients a tenant must not message on a channel, in normalised form
-- (src/suppression/mod.rs): email addresses lowercased, numbers E.164.
CREATE TABLE suppressions (
    tenant_id   TEXT NOT NULL,
    channel     channel NOT NULL,
    recipient   TEXT NOT NULL,
    -- hard_bounce, complaint, unsubscribe, opt_out, manual.
    reason      TEXT NOT NULL,
    -- Who added it: "webhook:sendgrid", "cli:<user>", "api:<token name>".
    source      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel, recipient)
);
