//! The SMTP adapter against a real SMTP server on 127.0.0.1 (aiosmtpd) that
//! offers STARTTLS and AUTH and answers 451 (greylisting or a system
//! failure) / 550 for chosen recipients.

use crate::support;

use outreach::job::{Channel, Content};
use outreach::provider::{self, ErrorKind, ProviderSettings};
use support::smtp::{SmtpOptions, SmtpServer};

const PASSWORD: &str = "s3cret-smtp-password";

fn server(dir: &std::path::Path) -> SmtpServer {
    SmtpServer::start(
        dir,
        SmtpOptions {
            starttls: true,
            require_tls: true,
            auth: Some(("clinic".into(), PASSWORD.into())),
        },
    )
}

fn settings(smtp: &SmtpServer, password: &str) -> ProviderSettings {
    settings_trusting(smtp, password, smtp.cert.as_deref())
}

/// Settings whose `ca_file` is `ca_file` (none: the system's roots only).
fn settings_trusting(smtp: &SmtpServer, password: &str, ca_file: Option<&str>) -> ProviderSettings {
    serde_json::from_value(serde_json::json!({
        "provider": "smtp", "host": "127.0.0.1", "port": smtp.port, "security": "starttls",
        "username": "clinic", "password": password, "from_email": "reminders@clinic.example",
        "from_name": "Clinic", "ca_file": ca_file,
    }))
    .unwrap()
}

fn mail_to(to: &str) -> outreach::job::Job {
    support::job(
        Channel::Email,
        to,
        Content::Email {
            subject: "Reminder".into(),
            text: Some("Tuesday".into()),
            html: None,
        },
    )
}

#[tokio::test]
async fn mail_goes_over_starttls_with_auth_and_the_queue_id_is_the_receipt() {
    outreach::app::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let smtp = server(dir.path());
    let p = provider::build(&settings(&smtp, PASSWORD), &support::context(), None).unwrap();

    let receipt = p.send(&mail_to("pat@example.com")).await.unwrap();

    assert!(
        receipt.message_id.unwrap().starts_with('Q'),
        "the id from the 250 reply"
    );
    let got = smtp.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["tls"], true);
    assert_eq!(got[0]["auth"], true);
    assert_eq!(got[0]["rcpt_tos"], serde_json::json!(["pat@example.com"]));
}

#[tokio::test]
async fn a_451_4_3_0_system_failure_is_transient_and_keeps_the_code() {
    outreach::app::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let smtp = server(dir.path());
    let p = provider::build(&settings(&smtp, PASSWORD), &support::context(), None).unwrap();

    let err = p.send(&mail_to("tempfail@example.com")).await.unwrap_err();

    assert_eq!(err.kind, ErrorKind::Transient);
    assert_eq!(err.code.as_deref(), Some("451"));
}

#[tokio::test]
async fn a_greylisted_recipient_is_deferred_after_one_rcpt_and_keeps_the_reply() {
    outreach::app::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let smtp = server(dir.path());
    let p = provider::build(&settings(&smtp, PASSWORD), &support::context(), None).unwrap();

    let err = p
        .send(&mail_to("greylist-pat@example.com"))
        .await
        .unwrap_err();

    assert_eq!(err.kind, ErrorKind::RecipientDeferred, "{err}");
    assert!(!err.kind.is_account_scoped());
    assert_eq!(err.code.as_deref(), Some("451"));
    assert!(err.message.contains("4.7.1 Greylisting in action"), "{err}");
    assert_eq!(smtp.rcpt_replies("greylist-pat@example.com"), ["451"]);
    assert!(smtp.messages().is_empty());
}

#[tokio::test]
async fn a_550_unknown_user_is_a_recipient_error_no_provider_would_fix() {
    outreach::app::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let smtp = server(dir.path());
    let p = provider::build(&settings(&smtp, PASSWORD), &support::context(), None).unwrap();

    let err = p.send(&mail_to("unknown@example.com")).await.unwrap_err();

    assert_eq!(err.kind, ErrorKind::Recipient);
    assert_eq!(err.code.as_deref(), Some("550"));
}

#[tokio::test]
async fn a_wrong_password_is_config_naming_the_fix_and_never_shows_the_password() {
    outreach::app::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let smtp = server(dir.path());
    let wrong = "wrong-password-value";
    let p = provider::build(&settings(&smtp, wrong), &support::context(), None).unwrap();

    let err = p.send(&mail_to("pat@example.com")).await.unwrap_err();

    assert_eq!(err.kind, ErrorKind::Config, "{err}");
    assert_eq!(err.code.as_deref(), Some("535"));
    assert!(
        err.message
            .contains("check the account's username and password"),
        "{err}"
    );
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(wrong) && !shown.contains(PASSWORD));
    }
    assert!(smtp.messages().is_empty());
}

#[tokio::test]
async fn a_server_certificate_that_does_not_verify_is_config_after_one_connection_per_send() {
    outreach::app::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let smtp = server(dir.path());
    // No ca_file: the test CA that signed the server's certificate is unknown.
    let s = settings_trusting(&smtp, PASSWORD, None);
    let p = provider::build(&s, &support::context(), None).unwrap();
    let before = smtp.connections();

    let first = p.send(&mail_to("pat@example.com")).await.unwrap_err();
    assert_eq!(
        smtp.connections() - before,
        1,
        "one connection for one send"
    );
    let second = p.send(&mail_to("pat@example.com")).await.unwrap_err();

    for err in [&first, &second] {
        assert_eq!(err.kind, ErrorKind::Config, "{err}");
        assert_eq!(
            err.message,
            "smtp: certificate for 127.0.0.1 does not verify (unknown issuer): fix the server certificate or set ca_file"
        );
    }
    assert_eq!(smtp.connections() - before, 2, "one connection per send");
    assert_eq!(smtp.rcpt_count("pat@example.com"), 0);
    assert!(smtp.messages().is_empty());
}

/// The error for `job` sent once to a fresh server, whose certificate the
/// account trusts or not.
async fn refused(job: &outreach::job::Job, trusted: bool) -> provider::ProviderError {
    outreach::app::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let smtp = server(dir.path());
    let ca = smtp.cert.clone().filter(|_| trusted);
    let s = settings_trusting(&smtp, PASSWORD, ca.as_deref());
    let p = provider::build(&s, &support::context(), None).unwrap();
    p.send(job).await.unwrap_err()
}

#[tokio::test]
async fn a_starttls_certificate_failure_has_a_code_naming_the_tls_error() {
    let err = refused(&mail_to("pat@example.com"), false).await;

    assert_eq!(err.kind, ErrorKind::Config, "{err}");
    assert_eq!(
        err.code.as_deref(),
        Some("certificate_unknown_issuer"),
        "{err}"
    );
}

#[tokio::test]
async fn a_recipient_the_server_echoes_in_lower_case_is_not_in_the_error() {
    let err = refused(&mail_to("Echo-Rcpt.Jane.Doe@Clinic.Example"), true).await;

    assert_eq!(err.code.as_deref(), Some("550"), "{err}");
    assert!(err.message.contains("Recipient address rejected"), "{err}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.to_ascii_lowercase().contains("jane.doe"), "{shown}");
    }
}

#[tokio::test]
async fn message_text_the_server_echoes_quoted_printable_is_not_in_the_error() {
    use base64::Engine as _;
    let text = "Résultat de votre biopsie : merci d'appeler le cabinet du Dr Martin.";
    let job = support::job(
        Channel::Email,
        "echo-body@example.com",
        Content::Email {
            subject: "Résultats".into(),
            text: Some(text.into()),
            html: None,
        },
    );

    let err = refused(&job, true).await;

    assert_eq!(err.code.as_deref(), Some("554"), "{err}");
    assert!(err.message.contains("Message refused"), "{err}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(text);
    for shown in [err.to_string(), format!("{err:?}")] {
        for piece in ["biopsie", "R=C3=A9sultat", "sultat", &b64[..12]] {
            assert!(!shown.contains(piece), "{piece:?} in {shown}");
        }
    }
}
