//! Slow and idle clients of the webhook listener, as a raw TCP client on
//! 127.0.0.1 plays them: a body or headers dripped slower than their
//! timeout are cut off, connections beyond `webhooks.max_connections` are
//! turned away while the first are held, and a flood of refused webhooks is
//! counted each but logged about once a second.

use crate::support;

use outreach::job::Channel;
use std::time::Duration;
use support::fake_providers::{self as fake, TWILIO_MESSAGE_SID, TWILIO_TOKEN};
use support::tenants::*;
use support::webhooks::*;
use support::{Binary, TestEnv, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// clinic-a sending SMS through the fake Twilio, the listener's settings
/// changed by `adjust`.
async fn twilio_world(adjust: impl FnOnce(&mut outreach::settings::Settings)) -> World {
    let twilio = fake::serve(&fake::twilio_path(), fake::Twilio).await;
    World::start_with(
        TestEnv::new().await,
        vec![("clinic-a", Channel::Sms, twilio_at(&twilio))],
        adjust,
    )
    .await
    .with(twilio)
}

async fn connect(w: &World) -> TcpStream {
    TcpStream::connect(w.rx.local.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// What the listener did with a raw client's bytes.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// It answered with this status.
    Answered(u16),
    /// It closed the connection.
    Closed,
    /// It was still waiting (every byte of a drip sent, or silent for 5 s).
    StillOpen,
}

/// Send `head`, then `drip` bytes, one every 100 ms, until the listener
/// answers or closes.
async fn drip(stream: &mut TcpStream, head: &str, drip: usize) -> Outcome {
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    for _ in 0..drip {
        if stream.write_all(b"a").await.is_err() {
            return Outcome::Closed;
        }
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed,
            Ok(Ok(n)) => return Outcome::Answered(status_of(&buf[..n])),
        }
    }
    Outcome::StillOpen
}

fn status_of(response: &[u8]) -> u16 {
    let line = String::from_utf8_lossy(response);
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_body_dripped_slower_than_the_body_timeout_is_cut_off_with_408() {
    let w = twilio_world(|s| s.webhooks.body_read_timeout_ms = 1000).await;
    let before = w.rx.refused("twilio", "body_timeout").await;
    let mut stream = connect(&w).await;
    // 300 bytes announced, one every 100 ms: 30 s to arrive in full.
    let head = "POST /webhooks/twilio/clinic-a HTTP/1.1\r\nhost: hooks\r\n\
                content-type: application/x-www-form-urlencoded\r\n\
                x-twilio-signature: x\r\ncontent-length: 300\r\n\r\n";
    let outcome = drip(&mut stream, head, 299).await;
    assert!(
        matches!(outcome, Outcome::Answered(408) | Outcome::Closed),
        "{outcome:?}"
    );
    assert_eq!(w.rx.refused("twilio", "body_timeout").await, before + 1.0);
    w.stop().await;
}

#[tokio::test]
async fn headers_dripped_slower_than_the_header_timeout_close_the_connection() {
    let w = twilio_world(|s| s.webhooks.header_read_timeout_ms = 1000).await;
    let mut stream = connect(&w).await;
    // A header that never ends, a byte every 100 ms.
    let head = "POST /webhooks/twilio/clinic-a HTTP/1.1\r\nhost: hooks\r\nx-padding: ";
    let outcome = drip(&mut stream, head, 300).await;
    assert!(
        matches!(outcome, Outcome::Closed | Outcome::Answered(408)),
        "{outcome:?}"
    );
    w.stop().await;
}

/// A kept-alive request and its answer (the body read to its end): 405, a
/// GET for no provider.
async fn ask(stream: &mut TcpStream) -> Outcome {
    let request = "GET /webhooks/unknown/x HTTP/1.1\r\nhost: hooks\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return Outcome::Closed;
    }
    read_answer(stream).await
}

/// One answer, the connection closed, or still open and silent after 5 s
/// (a deadline for failing, not a timing assertion).
async fn read_answer(stream: &mut TcpStream) -> Outcome {
    let mut got = vec![];
    let mut buf = [0u8; 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Err(_) => return Outcome::StillOpen,
            Ok(Ok(0)) | Ok(Err(_)) => return Outcome::Closed,
            Ok(Ok(n)) => n,
        };
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                let l = l.to_ascii_lowercase();
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        if got.len() >= end + 4 + length {
            return Outcome::Answered(status_of(&got));
        }
    }
}

/// A connection the listener serves and keeps open.
async fn held(w: &World) -> TcpStream {
    for _ in 0..50 {
        let mut stream = connect(w).await;
        if ask(&mut stream).await == Outcome::Answered(405) {
            return stream;
        }
        // A connection of the world's start-up not yet released: again.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no connection was served");
}

#[tokio::test]
async fn a_connection_beyond_max_connections_is_turned_away_while_the_first_are_held() {
    let w = twilio_world(|s| {
        s.webhooks.max_connections = 3;
        s.webhooks.header_read_timeout_ms = 60_000;
    })
    .await;
    let before = w.rx.refused("unknown", "connection_limit").await;
    let mut first = vec![held(&w).await, held(&w).await, held(&w).await];

    // A fourth, idle like the first three between their requests.
    let mut fourth = connect(&w).await;
    let outcome = read_answer(&mut fourth).await;
    assert!(
        matches!(outcome, Outcome::Answered(503) | Outcome::Closed),
        "a fourth connection is answered 503 or closed, not held: {outcome:?}"
    );
    for stream in &mut first {
        assert_eq!(
            ask(stream).await,
            Outcome::Answered(405),
            "the first three are still served"
        );
    }
    drop(first);

    // Once they are closed, a provider's signed webhook goes through again.
    let status = [
        ("MessageSid", TWILIO_MESSAGE_SID),
        ("MessageStatus", "delivered"),
        ("To", "+447700900123"),
    ];
    support::eventually(FINAL_WITHIN, "a webhook accepted again", || async {
        w.rx.twilio("clinic-a", &status, TWILIO_TOKEN).await == 200
    })
    .await;
    assert!(w.rx.refused("unknown", "connection_limit").await > before);
    w.stop().await;
}

#[tokio::test]
async fn a_flood_of_refused_webhooks_is_counted_each_and_logged_about_once_a_second() {
    let env = TestEnv::new().await;
    let mut vars = worker_env(&env);
    let port = free_port();
    vars.insert(
        "OUTREACH__WEBHOOKS__BIND".into(),
        format!("127.0.0.1:{port}"),
    );
    vars.insert(
        "OUTREACH__PROVIDERS__WEBHOOK_BASE_URL".into(),
        PUBLIC_BASE.into(),
    );
    let log = env.path("worker.log");
    let worker = Binary::worker_with_stderr(&vars, std::fs::File::create(&log).unwrap());
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/twilio/clinic-z");
    let post = || {
        client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", "x")
            .body("MessageSid=SM1&MessageStatus=delivered")
            .send()
    };
    support::eventually(FINAL_WITHIN, "the webhook listener up", || async {
        post().await.is_ok()
    })
    .await;

    // clinic-z has no Twilio account: each is refused (403, no_account).
    for _ in 0..200 {
        assert_eq!(post().await.unwrap().status(), 403);
    }

    let metrics = format!("http://127.0.0.1:{}/metrics", worker.http_port);
    let (_, scrape) = support::http_get(&metrics).await;
    let counted: f64 = scrape
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"outreach_webhooks_refused_total{provider="twilio",reason="no_account"} "#,
            )
        })
        .expect("the refusals counted")
        .parse()
        .unwrap();
    assert!(counted >= 200.0, "every refusal counted: {counted}");
    worker.terminate();
    let lines = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("webhook refused"))
        .count();
    assert!(
        (1..=20).contains(&lines),
        "about a line a second, not one per refusal: {lines} lines for 200"
    );
    env.cleanup().await;
}
