//! The per-clinic view without a tenant label on every series: only the
//! tenants an operator lists in `metrics.tenant_labels` get series of their
//! own, in one counter ([`super::TENANT_OUTCOMES`]). Everything else is
//! labelled by closed sets only, so the series count does not grow with the
//! number of tenants. The list is bounded ([`MAX_LISTED`]); tenants not on
//! it are still in the global counters and in `outreach_logs`
//! (SQL on it answers per-tenant questions).

use crate::job::Channel;
use std::collections::HashSet;
use std::sync::OnceLock;

/// The most tenants that may be listed: each costs 3 channels x 4+ statuses series.
pub const MAX_LISTED: usize = 200;

static LISTED: OnceLock<HashSet<String>> = OnceLock::new();

/// Set the list once, at start (later calls are ignored).
pub fn configure(tenants: &[String]) {
    let _ = LISTED.set(tenants.iter().cloned().collect());
}

/// Whether `tenant` has series of its own.
pub fn is_listed(tenant: &str) -> bool {
    LISTED.get().is_some_and(|l| l.contains(tenant))
}

/// Count an outcome for a listed tenant (`status`: a final status, or a
/// receipt such as `delivered` / `bounced` reported by a provider webhook);
/// nothing for others.
pub fn outcome(tenant: &str, channel: Channel, status: &'static str) {
    if is_listed(tenant) {
        metrics::counter!(super::TENANT_OUTCOMES, "tenant" => tenant.to_owned(),
            "channel" => channel.as_str(), "status" => status)
        .increment(1);
    }
}

pub(super) fn export_known() {
    for tenant in LISTED.get().into_iter().flatten() {
        for c in Channel::ALL {
            for s in super::FINAL_STATUSES {
                metrics::counter!(super::TENANT_OUTCOMES, "tenant" => tenant.clone(),
                    "channel" => c.as_str(), "status" => s)
                .absolute(0);
            }
        }
    }
}
