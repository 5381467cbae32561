-- Dispatch policy: deployment-wide rate limits and per-tenant held queues.

-- One GCRA bucket per (limited key, limit). `tat` is the theoretical arrival
-- time of the next send; a send is allowed when tat - now <= (burst - 1) x
-- interval, and then pushes tat one interval further. Every worker process
-- takes from the same rows, so a limit holds for the whole deployment.
-- `paused_until` is set when the provider answered 429 for that account.
CREATE TABLE rate_buckets (
    key           TEXT PRIMARY KEY,
    tat           TIMESTAMPTZ NOT NULL,
    paused_until  TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Take up to p_want sends from every bucket in p_keys (sorted by the
-- caller, so concurrent takers lock rows in the same order), as many as all
-- of them allow, or none: a worker takes a few at once for its next jobs (a
-- short lease), so a fast limit does not cost one round trip per send.
-- `granted` = 0 means wait `wait_secs`; `paused` says a bucket is paused by a
-- provider's 429 rather than merely full. The database clock is the one
-- clock every worker agrees on.
CREATE FUNCTION outreach_rate_take(
    p_keys        TEXT[],
    p_interval_us BIGINT[],
    p_burst       INTEGER[],
    p_want        INTEGER,
    OUT granted   INTEGER,
    OUT wait_secs DOUBLE PRECISION,
    OUT paused    BOOLEAN
) LANGUAGE plpgsql AS $$
DECLARE
    now_ts  TIMESTAMPTZ := clock_timestamp();
    n       INTEGER := coalesce(array_length(p_keys, 1), 0);
    tats    TIMESTAMPTZ[] := '{}';
    t       TIMESTAMPTZ;
    p_until TIMESTAMPTZ;
    slack   INTERVAL;
    avail   INTEGER;
BEGIN
    granted := greatest(p_want, 1);
    wait_secs := 0;
    paused := false;
    INSERT INTO rate_buckets (key, tat)
        SELECT k, now_ts FROM unnest(p_keys) AS k ORDER BY k
        ON CONFLICT (key) DO NOTHING;
    FOR i IN 1..n LOOP
        SELECT greatest(b.tat, now_ts), b.paused_until INTO t, p_until
            FROM rate_buckets b WHERE b.key = p_keys[i] FOR UPDATE;
        IF p_until > now_ts THEN
            paused := true;
            wait_secs := greatest(wait_secs, extract(epoch FROM p_until - now_ts));
        END IF;
        -- GCRA: k sends fit while t + (k - 1) x interval - now <= (burst - 1) x interval.
        slack := (p_burst[i] - 1) * p_interval_us[i] * INTERVAL '1 microsecond';
        avail := floor(extract(epoch FROM slack - (t - now_ts)) * 1000000 / p_interval_us[i])::INTEGER + 1;
        IF avail < 1 THEN
            wait_secs := greatest(wait_secs, extract(epoch FROM (t - now_ts) - slack));
        END IF;
        granted := least(granted, avail);
        tats := tats || t;
    END LOOP;
    IF paused OR granted < 1 THEN
        granted := 0;
        RETURN;
    END IF;
    FOR i IN 1..n LOOP
        UPDATE rate_buckets
           SET tat = tats[i] + granted * p_interval_us[i] * INTERVAL '1 microsecond', updated_at = now_ts
         WHERE key = p_keys[i];
    END LOOP;
END $$;

-- Queues holding one tenant channel's jobs while they wait for its rate
-- limit (or a paused provider), so they never sit in front of other tenants'
-- jobs. Every worker consumes every listed queue (single active consumer).
CREATE TABLE held_queues (
    queue             TEXT PRIMARY KEY,
    tenant_id         TEXT NOT NULL,
    channel           channel NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_diverted_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
