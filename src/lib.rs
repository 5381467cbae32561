//! outreach: multi-tenant delivery of email, SMS and WhatsApp jobs.
#![forbid(unsafe_code)]

pub mod job;
pub mod provider;
