#!/usr/bin/env bash
# Run the whole test suite on this machine: makes sure PostgreSQL and
# RabbitMQ answer on 127.0.0.1 and that the SMTP test server's Python
# package and promtool (tests/metrics.rs checks scrapes with it) are
# installed, then runs `cargo test`, then the fault suite
# (tests/faults.rs: it starts and restarts RabbitMQ nodes and PostgreSQL
# clusters of its own, on free ports), one test at a time.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh
python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install --quiet aiosmtpd
if ! command -v promtool >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus) >/dev/null
fi
cargo test --all-targets "$@"
cargo test --test faults "$@" -- --ignored --test-threads=1
