#!/usr/bin/env bash
# Checks of what operators deploy, run by .ci/run (no Docker engine needed):
# - Prometheus config and alert rules: `promtool check config` (which checks
#   the rules too) and `promtool test rules` (cases that fire and stay quiet);
# - scripts/check_ops.py: docker-compose.yml parsed and checked for structure,
#   the Grafana dashboard's queries checked by promtool, every outreach_* name
#   in alerts and dashboard exported by src/metrics.rs, every runbook link
#   pointing at a section of docs/runbook.md, deploy/k8s validated against the
#   Kubernetes schemas (kubernetes-validate).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v promtool >/dev/null || {
  echo "promtool is missing: apt-get install -y prometheus (.ci/run does)" >&2
  exit 1
}
promtool check config config/prometheus/prometheus.yml
(cd config/prometheus && promtool test rules alerts_test.yml)
python3 scripts/check_ops.py
