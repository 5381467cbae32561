//! The real SMTP server of tests/smtp/server.py (aiosmtpd), one per test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub out: String,
    pub cert: Option<String>,
}

#[derive(Default)]
pub struct SmtpOptions {
    /// Offer STARTTLS with a fresh self-signed certificate for "localhost".
    pub starttls: bool,
    pub require_tls: bool,
    pub auth: Option<(String, String)>,
}

impl SmtpServer {
    pub fn start(dir: &std::path::Path, opts: SmtpOptions) -> Self {
        let out = dir
            .join(format!("smtp-{}.jsonl", uuid::Uuid::now_v7().simple()))
            .to_string_lossy()
            .into_owned();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/server.py");
        let mut cmd = Command::new("python3");
        cmd.args([script, "--out", &out]);
        let mut cert = None;
        if opts.starttls {
            let (c, k) = (dir.join("smtp-cert.pem"), dir.join("smtp-key.pem"));
            let status = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost",
                ])
                .arg("-keyout")
                .arg(&k)
                .arg("-out")
                .arg(&c)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(
                status.success(),
                "openssl could not make a test certificate"
            );
            cmd.arg("--tls-cert").arg(&c).arg("--tls-key").arg(&k);
            if opts.require_tls {
                cmd.arg("--require-tls");
            }
            cert = Some(c.to_string_lossy().into_owned());
        }
        if let Some((u, p)) = &opts.auth {
            cmd.args(["--user", u, "--password", p]);
        }
        // stdin stays open: the server exits when we drop it.
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd) is needed for SMTP tests");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!("SMTP test server did not start (is aiosmtpd installed?): {line:?}")
            });
        Self {
            child,
            port,
            out,
            cert,
        }
    }

    /// Messages received so far.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
