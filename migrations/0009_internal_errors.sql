-- A job whose handling panicked (a defect in outreach) ends `failed` with
-- error kind `internal`, dead-lettered with reason `internal`.
ALTER TYPE error_kind ADD VALUE IF NOT EXISTS 'internal';
