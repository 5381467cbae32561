//! The real SMTP server of tests/smtp/server.py (aiosmtpd), one per test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub out: String,
    pub cert: Option<String>,
    /// One line per RCPT: `<address> <reply code>`.
    pub rcpt_log: String,
    /// One line per TCP connection accepted (the start-up probe included).
    pub conn_log: String,
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
        let id = uuid::Uuid::now_v7().simple();
        let file = |suffix: &str| {
            dir.join(format!("smtp-{id}{suffix}"))
                .to_string_lossy()
                .into_owned()
        };
        let (out, rcpt_log, conn_log) = (file(".jsonl"), file("-rcpt.log"), file("-conn.log"));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp/server.py");
        let mut cmd = Command::new("python3");
        cmd.args([
            script,
            "--out",
            &out,
            "--rcpt-log",
            &rcpt_log,
            "--conn-log",
            &conn_log,
        ]);
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
            rcpt_log,
            conn_log,
        }
    }

    /// The RCPT commands seen for `address`, as their reply codes, in order.
    pub fn rcpt_replies(&self, address: &str) -> Vec<String> {
        std::fs::read_to_string(&self.rcpt_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(a, _)| *a == address)
            .map(|(_, code)| code.to_owned())
            .collect()
    }

    /// How many RCPT commands named `address`.
    pub fn rcpt_count(&self, address: &str) -> usize {
        self.rcpt_replies(address).len()
    }

    /// TCP connections accepted so far (the start-up probe included, so
    /// compare before and after).
    pub fn connections(&self) -> usize {
        std::fs::read_to_string(&self.conn_log)
            .unwrap_or_default()
            .lines()
            .count()
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

/// A TLS server on 127.0.0.1 with a leaf certificate for localhost signed by
/// a fresh test CA nobody trusts: it completes handshakes that a client
/// accepts and answers `HTTP/1.1 503`. Returns (the server, its port).
pub struct UntrustedTlsServer {
    child: Child,
    pub port: u16,
}

impl UntrustedTlsServer {
    pub fn start(dir: &std::path::Path) -> Self {
        let (_ca, leaf, key) = make_certificates(dir);
        let script = r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print("READY %d" % s.getsockname()[1], flush=True)
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        t.recv(65536)
        t.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        t.close()
    except Exception:
        c.close()
def accept():
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
sys.stdin.read()
"#;
        let mut child = Command::new("python3")
            .args(["-c", script, &leaf, &key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("TLS test server did not start: {line:?}"));
        Self { child, port }
    }
}

impl Drop for UntrustedTlsServer {
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
