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
            let (ca, leaf, key) = make_certificates(dir);
            cmd.arg("--tls-cert").arg(&leaf).arg("--tls-key").arg(&key);
            if opts.require_tls {
                cmd.arg("--require-tls");
            }
            cert = Some(ca);
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

/// A test CA and a leaf for 127.0.0.1 / localhost signed by it (rustls
/// refuses a self-signed CA certificate used as the server's own).
/// Returns (ca.pem, leaf.pem, leaf.key).
fn make_certificates(dir: &std::path::Path) -> (String, String, String) {
    let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let (ca_key, ca, key, csr, leaf, ext) = (
        p("ca.key"),
        p("ca.pem"),
        p("leaf.key"),
        p("leaf.csr"),
        p("leaf.pem"),
        p("leaf.ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: Vec<Vec<&str>> = vec![
        [
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=outreach test CA",
                "-keyout",
                &ca_key,
                "-out",
                &ca,
            ],
        ]
        .concat(),
        [
            &["req"][..],
            &ec,
            &["-subj", "/CN=localhost", "-keyout", &key, "-out", &csr],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &leaf,
            "-extfile",
            &ext,
        ],
    ];
    for args in steps {
        let ok = Command::new("openssl")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {args:?} failed");
    }
    (ca, leaf, key)
}
