//! Shared by the provider test binaries; each uses only part of it.
#![allow(dead_code)]

pub mod fake_providers;

use outreach::job::{Channel, Content, Job, JobId, Template, TenantId};
use outreach::provider::{ProviderContext, ProviderError};
use std::time::Duration;

/// A context like production's, with no status callbacks.
pub fn context() -> ProviderContext {
    ProviderContext::new(Duration::from_secs(10), Duration::from_secs(5), None)
}

pub fn job(channel: Channel, recipient: &str, content: Content) -> Job {
    let mut metadata = serde_json::Map::new();
    metadata.insert("first_name".into(), "Ada".into());
    Job {
        id: JobId::parse("job-42").unwrap(),
        tenant_id: TenantId::parse("clinic-7").unwrap(),
        channel,
        recipient: recipient.to_owned(),
        content,
        metadata: Some(metadata),
        not_after: None,
    }
}

pub fn email_job() -> Job {
    job(
        Channel::Email,
        "patient@example.org",
        Content::Email {
            subject: "Your appointment".into(),
            text: Some("See you at 10:00.".into()),
            html: Some("<p>See you at 10:00.</p>".into()),
        },
    )
}

pub fn text_job(channel: Channel) -> Job {
    job(
        channel,
        "+447700900123",
        Content::Text {
            text: "See you at 10:00.".into(),
        },
    )
}

pub fn template_job() -> Job {
    job(
        Channel::Whatsapp,
        "+447700900123",
        Content::Template {
            template: Template {
                name: "appointment_reminder".into(),
                language: "en_GB".into(),
                parameters: vec!["Ada".into(), "10:00".into()],
            },
        },
    )
}

/// The secret appears nowhere in what an error shows.
pub fn assert_secret_hidden(e: &ProviderError, secret: &str) {
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(secret), "secret leaked: {shown}");
}
