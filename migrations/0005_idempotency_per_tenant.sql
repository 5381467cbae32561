-- Idempotency is per tenant: a job id that another tenant already used is
-- this tenant's own job, never a duplicate of the other's (one tenant must
-- not be able to suppress another's message by guessing its id).
--
-- An invalid payload whose tenant could not be read is kept under the tenant
-- '' (never a valid tenant id); reads turn it back into NULL.
UPDATE outreach_logs SET tenant_id = '' WHERE tenant_id IS NULL;
ALTER TABLE outreach_logs ALTER COLUMN tenant_id SET DEFAULT '';
ALTER TABLE outreach_logs ALTER COLUMN tenant_id SET NOT NULL;
ALTER TABLE outreach_logs DROP CONSTRAINT outreach_logs_pkey;
ALTER TABLE outreach_logs ADD PRIMARY KEY (tenant_id, job_id);
