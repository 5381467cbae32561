-- Inbound opt-out / opt-in keywords (STOP, START...), one row per provider
-- message. A provider's redelivery of the same message (same id) is
-- recognised and changes nothing; of the decisions for one recipient, the
-- one the recipient sent last (by the provider's clock) is the one applied,
-- so a START that arrives after a newer STOP never lifts it, and an old STOP
-- that arrives after a newer START never puts the recipient back.
CREATE TABLE inbound_decisions (
    tenant_id    TEXT NOT NULL,
    provider     TEXT NOT NULL,
    -- The inbound message's id (Meta wamid, Twilio MessageSid, Vonage messageId).
    message_id   TEXT NOT NULL,
    channel      channel NOT NULL,
    -- Normalised, as in suppressions.
    recipient    TEXT NOT NULL,
    -- true: STOP (listed); false: START (an opt-out lifted).
    opt_out      BOOLEAN NOT NULL,
    -- When the recipient sent it, by the provider's clock (Twilio's webhook
    -- carries none: when it arrived).
    sent_at      TIMESTAMPTZ NOT NULL,
    -- Whether it was applied (false: a newer decision had already arrived).
    applied      BOOLEAN NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, provider, message_id)
);

CREATE INDEX inbound_decisions_recipient ON inbound_decisions (tenant_id, channel, recipient, sent_at);
