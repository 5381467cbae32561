//! The delivery log on the real database: claims and records.

use crate::support;

use outreach::delivery_log::{Claim, ClaimRequest, DeliveryLog, DeliveryStatus, Record};
use outreach::job::{Channel, JobId, TenantId};
use outreach::provider::{ErrorKind, ProviderError, ProviderKind};
use support::TestEnv;

fn claim(id: &str) -> ClaimRequest {
    ClaimRequest {
        job_id: JobId::parse(id).unwrap(),
        tenant_id: TenantId::parse("clinic-1").unwrap(),
        channel: Channel::Email,
    }
}

fn sent(id: &str) -> Record {
    let mut metadata = serde_json::Map::new();
    metadata.insert("appointment".into(), "7781".into());
    Record {
        job_id: id.into(),
        tenant_id: Some("clinic-1".into()),
        channel: Some(Channel::Email),
        status: DeliveryStatus::Sent,
        provider: Some(ProviderKind::Sendgrid),
        provider_message_id: Some(format!("msg-{id}")),
        chain_step: Some(0),
        fallback_used: false,
        attempts: 1,
        new_attempts: vec![],
        error: None,
        retry_at: None,
        content: None,
        metadata: Some(metadata),
    }
}

#[tokio::test]
async fn a_row_postgresql_refuses_is_stored_without_its_free_form_values_and_its_batch_mates_are_recorded()
 {
    let t = TestEnv::new().await;
    // One writer: records that arrive together share a batch.
    let log = DeliveryLog::new(t.pool.clone(), 64, 1, 1, 60);
    for i in 0..20 {
        let granted = log.claim(claim(&format!("j-{i}"))).await.unwrap();
        assert!(matches!(granted, Claim::Granted { .. }));
    }
    let records = (0..20).map(|i| {
        let mut r = sent(&format!("j-{i}"));
        if i == 10 {
            // jsonb and text refuse NUL: the batch it is in fails as a whole.
            r.metadata
                .as_mut()
                .unwrap()
                .insert("note".into(), "a\u{0}b".into());
            r.status = DeliveryStatus::Failed;
            r.error = Some(ProviderError::new(
                ErrorKind::Recipient,
                Some("550".into()),
                "smtp: 550 mailbox \u{0} unknown",
            ));
        }
        let log = log.clone();
        tokio::spawn(async move { log.record(r).await })
    });
    let results: Vec<_> = futures::future::join_all(records).await;

    for (i, r) in results.into_iter().enumerate() {
        let row = r
            .unwrap()
            .unwrap_or_else(|e| panic!("j-{i} not recorded: {e}"));
        let row = row.expect("the row was open");
        if i == 10 {
            assert_eq!(row.status, DeliveryStatus::Failed);
            assert_eq!(row.error_code.as_deref(), Some("550"));
            assert!(row.metadata.is_none(), "the offending values are dropped");
            assert!(
                row.error_message.unwrap().contains("could not be stored"),
                "and the row says so"
            );
        } else {
            assert_eq!(row.status, DeliveryStatus::Sent, "j-{i}");
            assert!(row.metadata.is_some());
        }
    }
    t.cleanup().await;
}

#[tokio::test]
async fn a_job_id_another_tenant_already_used_is_claimed_as_this_tenant_s_own_job() {
    let t = TestEnv::new().await;
    let log = DeliveryLog::new(t.pool.clone(), 16, 1, 1, 60);
    let of = |tenant: &str| ClaimRequest {
        job_id: JobId::parse("reminder-1").unwrap(),
        tenant_id: TenantId::parse(tenant).unwrap(),
        channel: Channel::Email,
    };
    assert!(matches!(
        log.claim(of("clinic-1")).await.unwrap(),
        Claim::Granted { .. }
    ));
    log.record(sent("reminder-1"))
        .await
        .unwrap()
        .expect("recorded");

    // Another tenant's job with the same id is not a duplicate of it.
    assert!(matches!(
        log.claim(of("clinic-2")).await.unwrap(),
        Claim::Granted { attempts: 0 }
    ));
    // And the first tenant's own copy still is.
    assert!(matches!(
        log.claim(of("clinic-1")).await.unwrap(),
        Claim::Done(_)
    ));
    t.cleanup().await;
}

#[tokio::test]
async fn an_invalid_payload_reusing_a_job_s_id_leaves_that_job_s_row_alone() {
    let t = TestEnv::new().await;
    let log = DeliveryLog::new(t.pool.clone(), 16, 1, 1, 60);
    assert!(matches!(
        log.claim(claim("in-flight")).await.unwrap(),
        Claim::Granted { .. }
    ));

    let mut bad = sent("in-flight");
    bad.status = DeliveryStatus::Failed;
    bad.provider = None;
    bad.error = Some(ProviderError::new(
        ErrorKind::InvalidJob,
        Some("invalid_recipient".into()),
        "recipient is not an email address",
    ));
    assert!(
        log.record_invalid(bad).await.unwrap().is_none(),
        "left alone"
    );

    let row = log.get("clinic-1", "in-flight").await.unwrap().unwrap();
    assert_eq!(
        row.status,
        DeliveryStatus::Processing,
        "the real job is still in flight"
    );
    t.cleanup().await;
}
