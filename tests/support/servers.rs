//! Servers a fault test starts for itself, so it may stop and restart them:
//! a RabbitMQ node and a PostgreSQL cluster on free ports, with their data in
//! a temporary directory. The shared services are never touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

/// A RabbitMQ node of the test's own (`rtest-<id>@localhost`).
pub struct OwnRabbit {
    dir: tempfile::TempDir,
    pub node: String,
    pub port: u16,
    dist_port: u16,
}

impl OwnRabbit {
    /// Start a node and wait until it accepts clients.
    pub fn start() -> Self {
        let rabbit = Self::create(None);
        rabbit.boot();
        rabbit
    }

    /// A node not yet booted; with `cookie`, the Erlang cookie nodes of one
    /// cluster share.
    fn create(cookie: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = &uuid::Uuid::now_v7().simple().to_string()[20..];
        let rabbit = Self {
            node: format!("rtest{id}@localhost"),
            port: super::free_port(),
            dist_port: super::free_port(),
            dir,
        };
        std::fs::write(
            rabbit.path("enabled_plugins"),
            "[rabbitmq_consistent_hash_exchange].",
        )
        .unwrap();
        if let Some(cookie) = cookie {
            use std::os::unix::fs::PermissionsExt;
            let path = rabbit.path(".erlang.cookie");
            std::fs::write(&path, cookie).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        rabbit
    }

    /// SIGKILL the node's Erlang VM: no goodbye to clients or peers.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.path("pid")).unwrap();
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -9 {pid}");
    }

    /// SIGSTOP the node's Erlang VM: a hung node. Its TCP connections stay
    /// open and it answers nothing until [`Self::resume`].
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Self::freeze`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = std::fs::read_to_string(self.path("pid")).unwrap();
        let status = Command::new("kill")
            .args([sig, pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        // Its own home: its own Erlang cookie, shared with the CLI below.
        cmd.env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            // As config/rabbitmq/advanced.config ships it: peers take a hung
            // node for down within ~10 s instead of ~60 s.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel net_ticktime 10",
            )
            .stdin(Stdio::null());
    }

    /// `rabbitmqctl -n <node> <args>`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(format!("{RABBIT_BIN}/rabbitmqctl"));
        self.env(&mut cmd);
        cmd.arg("-n").arg(&self.node).args(args).output().unwrap()
    }

    /// Start the node's Erlang VM (after [`Self::stop`]) and wait for it.
    pub fn boot(&self) {
        self.launch();
        self.await_startup();
    }

    fn launch(&self) {
        let mut cmd = Command::new(format!("{RABBIT_BIN}/rabbitmq-server"));
        self.env(&mut cmd);
        let status = cmd.arg("-detached").status().unwrap();
        assert!(status.success(), "rabbitmq-server -detached failed");
    }

    fn await_startup(&self) {
        let started = Instant::now();
        while !self
            .ctl(&["await_startup", "--timeout", "60"])
            .status
            .success()
        {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "own RabbitMQ node {} did not start (logs in {})",
                self.node,
                self.path("log").display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Stop the RabbitMQ application, the VM staying up (`stop_app`).
    pub fn stop_app(&self) {
        assert!(self.ctl(&["stop_app"]).status.success());
    }

    pub fn start_app(&self) {
        assert!(self.ctl(&["start_app"]).status.success());
        self.await_startup();
    }

    /// Stop the whole node (its data stays for [`Self::boot`]).
    pub fn stop(&self) {
        let _ = self.ctl(&["stop"]);
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        // A frozen node would not answer `stop`; a killed one has no
        // process left to wake (so the answer is not checked).
        if let Ok(pid) = std::fs::read_to_string(self.path("pid")) {
            let _ = Command::new("kill")
                .args(["-CONT", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
        self.stop();
    }
}

/// A RabbitMQ cluster of the test's own: nodes on their own ports, joined
/// to the first.
pub struct OwnCluster {
    pub nodes: Vec<OwnRabbit>,
}

impl OwnCluster {
    pub fn start(size: usize) -> Self {
        let cookie = uuid::Uuid::now_v7().simple().to_string().to_uppercase();
        let nodes: Vec<OwnRabbit> = (0..size)
            .map(|_| OwnRabbit::create(Some(&cookie)))
            .collect();
        // Boot them side by side: each takes seconds.
        nodes.iter().for_each(OwnRabbit::launch);
        nodes.iter().for_each(OwnRabbit::await_startup);
        for node in &nodes[1..] {
            for args in [
                &["stop_app"][..],
                &["join_cluster", &nodes[0].node],
                &["start_app"],
            ] {
                let out = node.ctl(args);
                assert!(
                    out.status.success(),
                    "rabbitmqctl {args:?} on {}: {}",
                    node.node,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            node.await_startup();
        }
        Self { nodes }
    }

    /// Every node's URL, comma-separated, first node first (`amqp.url`).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(OwnRabbit::url).collect();
        urls.join(",")
    }
}

/// A PostgreSQL cluster of the test's own (`initdb` + `pg_ctl`), trust
/// auth, on a free port.
pub struct OwnPostgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl OwnPostgres {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pg = Self {
            port: super::free_port(),
            dir,
        };
        let out = pg.as_postgres("initdb", &["-A", "trust", "-U", "postgres", "-D"], true);
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.boot();
        pg
    }

    /// The server's URL, without a database name.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    /// Run a PostgreSQL tool on the data directory, as the `postgres` OS
    /// user when we are root (PostgreSQL refuses to run as root).
    fn as_postgres(&self, tool: &str, args: &[&str], data_last: bool) -> Output {
        let data = self.data().join("data");
        let mut argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if data_last {
            argv.push(data.to_string_lossy().into_owned());
        }
        if is_root() {
            let _ = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(self.data())
                .status();
            let line = std::iter::once(tool.to_string())
                .chain(argv.iter().map(|a| format!("'{a}'")))
                .collect::<Vec<_>>()
                .join(" ");
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", &line])
                .stdin(Stdio::null())
                .output()
                .unwrap()
        } else {
            Command::new(tool)
                .args(&argv)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data().join("data").to_string_lossy().into_owned();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data().display()
        );
        let mut argv = vec!["-D", &data, "-w", "-o", &opts];
        argv.extend_from_slice(args);
        self.as_postgres("pg_ctl", &argv, false)
    }

    pub fn boot(&self) {
        let log = self.data().join("pg.log").to_string_lossy().into_owned();
        let out = self.pg_ctl(&["-l", &log, "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_ctl stop -m fast`: connections are cut at once.
    pub fn stop(&self) {
        let _ = self.pg_ctl(&["-m", "fast", "stop"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}
