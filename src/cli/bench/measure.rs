//! CPU and memory from `/proc` (Linux): the worker (this process minus the
//! bench's auxiliary threads, or child processes), RabbitMQ (`beam.smp`) and
//! PostgreSQL (every `postgres` process, other users' sessions included).

use std::fs;

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ; 100 on Linux
/// builds for x86-64 and arm64).
const TICKS_PER_SEC: f64 = 100.0;

/// Name given to the bench's auxiliary runtime threads (fake provider, event
/// collector), so their CPU can be kept out of the worker's.
pub const AUX_THREAD: &str = "bench-aux";

/// Which processes count as "the worker".
#[derive(Debug, Clone)]
pub enum WorkerProcs {
    /// Workers run in this process: all of it except the auxiliary threads.
    InProcess,
    /// Workers are these child processes.
    Children(Vec<u32>),
}

/// CPU seconds consumed so far, per party.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSnapshot {
    pub worker: f64,
    pub rabbitmq: f64,
    pub postgres: f64,
}

impl CpuSnapshot {
    /// Take a snapshot now.
    pub fn take(workers: &WorkerProcs) -> Self {
        let worker = match workers {
            WorkerProcs::InProcess => {
                let own = stat_cpu("/proc/self/stat").unwrap_or(0.0);
                own - aux_threads_cpu()
            }
            WorkerProcs::Children(pids) => pids
                .iter()
                .filter_map(|p| stat_cpu(&format!("/proc/{p}/stat")))
                .sum(),
        };
        let (mut rabbitmq, mut postgres) = (0.0, 0.0);
        for (comm, cpu) in all_processes() {
            match comm.as_str() {
                "beam.smp" => rabbitmq += cpu,
                "postgres" => postgres += cpu,
                _ => {}
            }
        }
        Self {
            worker,
            rabbitmq,
            postgres,
        }
    }

    /// `self - earlier`, per party.
    pub fn since(&self, earlier: &CpuSnapshot) -> CpuSnapshot {
        CpuSnapshot {
            worker: self.worker - earlier.worker,
            rabbitmq: self.rabbitmq - earlier.rabbitmq,
            postgres: self.postgres - earlier.postgres,
        }
    }
}

/// Resident set size in bytes of the worker process(es), now.
pub fn worker_rss(workers: &WorkerProcs) -> u64 {
    match workers {
        WorkerProcs::InProcess => status_kb("/proc/self/status", "VmRSS:") * 1024,
        WorkerProcs::Children(pids) => pids
            .iter()
            .map(|p| status_kb(&format!("/proc/{p}/status"), "VmRSS:") * 1024)
            .sum(),
    }
}

/// utime + stime of a `stat` file, in seconds.
fn stat_cpu(path: &str) -> Option<f64> {
    let text = fs::read_to_string(path).ok()?;
    parse_stat(&text).map(|(_, cpu)| cpu)
}

/// `(comm, cpu seconds)` from the text of a `/proc/<pid>/stat`. The command
/// name is in parentheses and may contain spaces, so fields are counted after
/// the last `)`.
fn parse_stat(text: &str) -> Option<(String, f64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After the comm: state is field 3, utime field 14, stime field 15.
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / TICKS_PER_SEC))
}

fn aux_threads_cpu() -> f64 {
    let Ok(dir) = fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|t| parse_stat(&t))
        .filter(|(comm, _)| comm.starts_with(AUX_THREAD))
        .map(|(_, cpu)| cpu)
        .sum()
}

/// `/proc/<pid>` of every process.
fn process_dirs() -> Vec<std::path::PathBuf> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path())
        .collect()
}

fn all_processes() -> Vec<(String, f64)> {
    process_dirs()
        .into_iter()
        .filter_map(|d| fs::read_to_string(d.join("stat")).ok())
        .filter_map(|t| parse_stat(&t))
        .collect()
}

/// Resident set size in bytes of every process named `comm` (`beam.smp`).
pub fn rss_of_command(comm: &str) -> u64 {
    process_dirs()
        .into_iter()
        .filter(|d| {
            fs::read_to_string(d.join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
                .is_some_and(|(c, _)| c == comm)
        })
        .map(|d| status_kb(&d.join("status").to_string_lossy(), "VmRSS:") * 1024)
        .sum()
}

fn status_kb(path: &str, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_command_name_parse() {
        let line =
            "42 (tokio runtime w) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0";
        let (comm, cpu) = parse_stat(line).unwrap();
        assert_eq!(comm, "tokio runtime w");
        assert!((cpu - 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_rss_of_a_command_counts_its_processes() {
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        let (comm, _) = parse_stat(&own).unwrap();
        assert!(rss_of_command(&comm) >= worker_rss(&WorkerProcs::InProcess) / 2);
        assert_eq!(rss_of_command("no-such-command-here"), 0);
    }

    #[test]
    fn this_process_has_a_readable_stat_and_rss() {
        assert!(stat_cpu("/proc/self/stat").is_some());
        assert!(worker_rss(&WorkerProcs::InProcess) > 0);
    }
}
