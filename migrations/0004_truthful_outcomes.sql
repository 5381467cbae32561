-- Truthful outcomes.
--
-- `simulated`: a final state for a message the sandbox accepted. Nothing was
-- delivered, so it must never read as `sent`.
ALTER TYPE delivery_status ADD VALUE IF NOT EXISTS 'simulated' AFTER 'sent';

-- `recipient_deferred`: the recipient's side asked to come back later
-- (greylisting, mailbox busy); retried, but not held against the account.
ALTER TYPE error_kind ADD VALUE IF NOT EXISTS 'recipient_deferred' AFTER 'config';
