//! Commands other than `worker` print their answer, and nothing about
//! their plumbing (migrations already applied, broker connections).

use crate::support;

use support::{TestEnv, cli_output};

#[tokio::test]
async fn cli_commands_say_nothing_about_migrations_or_broker_connections() {
    let env = TestEnv::new().await;
    let mut vars = env.env_vars();
    vars.insert(
        "OUTREACH_ENCRYPTION_KEYS".into(),
        format!("k1:{}", support::tenants::KEY),
    );
    let commands: [&[&str]; 6] = [
        &["tenant", "list"],
        &["keys", "rotate"],
        &["suppression", "list", "clinic-1"],
        &[
            "enqueue",
            "--tenant",
            "clinic-1",
            "--channel",
            "sms",
            "--to",
            "+447700900123",
            "--text",
            "See you Tuesday.",
        ],
        &["dlq", "list"],
        &["dlq", "replay", "--dry-run"],
    ];
    for args in commands {
        let out = cli_output(&vars, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "outreach {args:?} failed: {stderr}");
        for plumbing in ["_sqlx_migrations", "connected to RabbitMQ"] {
            assert!(
                !stderr.contains(plumbing),
                "outreach {args:?} logged {plumbing:?}:\n{stderr}"
            );
        }
    }
    env.cleanup().await;
}

/// `enqueue` checks a job built from flags with the worker's validator
/// before it connects, and names the flag to fix (the broker here is a
/// closed port: the answer must not depend on it).
#[test]
fn enqueue_refuses_an_invalid_job_before_connecting_naming_the_flag() {
    let vars = std::collections::HashMap::from([(
        "OUTREACH__AMQP__URL".to_string(),
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", support::free_port()),
    )]);
    let cases: [(&[&str], &str); 2] = [
        (
            &[
                "--channel",
                "email",
                "--to",
                "patient@example.org",
                "--text",
                "Hi",
            ],
            "--subject",
        ),
        (&["--channel", "sms", "--to", "12", "--text", "Hi"], "--to"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["enqueue", "--tenant", "clinic-1"];
        args.extend_from_slice(flags);
        let out = cli_output(&vars, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr.contains(named),
            "{args:?}: {named} not named in {stderr}"
        );
        assert!(
            !stderr.contains("RabbitMQ"),
            "{args:?} tried the broker first: {stderr}"
        );
    }
}
