-- Events of a system default account (shared by tenants) arrive without a
-- tenant: their row is found by the provider's message id alone.
CREATE INDEX outreach_logs_message_any_tenant ON outreach_logs (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
