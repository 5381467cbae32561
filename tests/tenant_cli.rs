//! The `tenant` and `health` commands as scripts use them: exit codes that
//! agree with the admin API (nothing there: non-zero, with a message) and
//! `--json` on every command that shows data.

use crate::support;

use outreach::job::Channel;
use serde_json::{Value, json};
use support::tenants::{set_tenant, worker_env};
use support::{TestEnv, cli_output, free_port};

const SECRET: &str = "SG.tenant-cli-secret-0123456789";

async fn clinic_with_email_and_sms(env: &TestEnv) {
    set_tenant(
        env,
        "clinic-1",
        Channel::Email,
        json!({"chain": [{"provider": "sendgrid", "api_key": SECRET,
            "from_email": "desk@clinic.example", "base_url": "http://127.0.0.1:9"}]}),
    )
    .await;
    set_tenant(
        env,
        "clinic-1",
        Channel::Sms,
        json!({"chain": [{"provider": "sandbox"}]}),
    )
    .await;
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test]
async fn tenant_show_of_a_tenant_with_nothing_stored_fails_saying_so() {
    let env = TestEnv::new().await;
    let out = cli_output(&worker_env(&env), &["tenant", "show", "clinic-none"]);
    let said = text(&out.stderr);
    assert!(!out.status.success(), "exit 0 for nothing: {said}");
    assert!(
        said.contains("clinic-none") && said.contains("no config"),
        "{said}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn tenant_delete_of_nothing_fails_saying_so_and_of_something_succeeds() {
    let env = TestEnv::new().await;
    clinic_with_email_and_sms(&env).await;
    let vars = worker_env(&env);
    for args in [
        &["tenant", "delete", "clinic-none"][..],
        &["tenant", "delete", "clinic-1", "--channel", "whatsapp"],
    ] {
        let out = cli_output(&vars, args);
        let said = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} exit 0 for nothing: {said}");
        assert!(said.contains("nothing to delete"), "{args:?}: {said}");
    }
    let out = cli_output(&vars, &["tenant", "delete", "clinic-1", "--channel", "sms"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "deleted");
    env.cleanup().await;
}

#[tokio::test]
async fn tenant_show_json_is_one_document_like_the_admin_api() {
    let env = TestEnv::new().await;
    clinic_with_email_and_sms(&env).await;
    let out = cli_output(&worker_env(&env), &["tenant", "show", "clinic-1", "--json"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(doc["tenant"], "clinic-1");
    let channels = doc["channels"].as_object().unwrap();
    assert_eq!(
        channels.keys().collect::<Vec<_>>(),
        vec!["email", "sms"],
        "{doc}"
    );
    assert_eq!(doc["channels"]["email"]["chain"][0]["provider"], "sendgrid");
    assert!(!stdout.contains(SECRET), "secrets stay masked: {stdout}");
    env.cleanup().await;
}

#[tokio::test]
async fn tenant_list_json_is_one_object_per_config() {
    let env = TestEnv::new().await;
    clinic_with_email_and_sms(&env).await;
    let out = cli_output(&worker_env(&env), &["tenant", "list", "--json"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert_eq!(rows[0]["tenant"], "clinic-1");
    assert_eq!(rows[0]["channel"], "email");
    assert_eq!(rows[0]["enabled"], true);
    assert_eq!(rows[0]["chain"], json!(["sendgrid"]));
    assert_eq!(rows[1]["channel"], "sms");
    assert_eq!(rows[1]["chain"], json!(["sandbox"]));
    assert!(rows[1]["version"].is_number(), "{stdout}");
    assert!(!stdout.contains(SECRET), "{stdout}");
    env.cleanup().await;
}

#[tokio::test]
async fn tenant_test_json_is_the_result_on_one_line() {
    let env = TestEnv::new().await;
    clinic_with_email_and_sms(&env).await;
    let out = cli_output(
        &worker_env(&env),
        &[
            "tenant",
            "test",
            "clinic-1",
            "--channel",
            "sms",
            "--to",
            "+14155550100",
            "--json",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let result: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["simulated"], true, "{result}");
    assert_eq!(result["provider"], "sandbox", "{result}");
    env.cleanup().await;
}

#[tokio::test]
async fn health_json_says_not_ready_and_where_it_asked_when_no_worker_answers() {
    let env = TestEnv::new().await;
    let url = format!("http://127.0.0.1:{}/readyz", free_port());
    let out = cli_output(&env.env_vars(), &["health", "--url", &url, "--json"]);
    assert!(!out.status.success(), "no worker: not ready");
    let doc: Value = serde_json::from_str(&text(&out.stdout)).expect("one JSON document");
    assert_eq!(doc["ready"], false, "{doc}");
    assert_eq!(doc["url"], url.as_str(), "{doc}");
    assert!(doc["error"].is_string(), "{doc}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_sandbox_record_file_in_a_missing_folder_is_refused_when_stored() {
    let env = TestEnv::new().await;
    let vars = worker_env(&env);
    let set = |record: &str| {
        let file = env.path("sandbox.json");
        let cfg = json!({"chain": [{"provider": "sandbox", "record_file": record}]});
        std::fs::write(&file, cfg.to_string()).unwrap();
        cli_output(
            &vars,
            &[
                "tenant",
                "set",
                "clinic-1",
                "--channel",
                "sms",
                "--file",
                &file,
            ],
        )
    };

    let missing = env.path("no-such-folder/sent.jsonl");
    let out = set(&missing);
    let said = text(&out.stderr);
    assert!(!out.status.success(), "stored: {}", text(&out.stdout));
    assert!(
        said.contains("chain[0].record_file") && said.contains("folder does not exist"),
        "{said}"
    );
    let out = set(&env.path("sent.jsonl"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.cleanup().await;
}

/// `admin hash-token --generate`: a token to give the client, and the digest
/// that configures it; the README's command keeps the token (it used to
/// print only the digest of a token nobody saw).
#[test]
fn hash_token_generate_prints_a_new_token_and_its_digest() {
    let out = cli_output(&Default::default(), &["admin", "hash-token", "--generate"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let token = lines[0].strip_prefix("token ").expect("a token line first");
    let digest = lines[1].strip_prefix("sha256 ").expect("then its digest");
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(digest, outreach::admin_api::hash_token(token));
    let again = cli_output(&Default::default(), &["admin", "hash-token", "--generate"]);
    assert!(
        !String::from_utf8(again.stdout).unwrap().contains(token),
        "a new token each time"
    );
}

/// `--stdin` keeps the token off the command line (shell history, `ps`).
#[test]
fn hash_token_reads_the_token_from_stdin() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outreach"))
        .args(["admin", "hash-token", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret-token\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        outreach::admin_api::hash_token("s3cret-token")
    );
}
