//! Child processes for tests that need a fresh process: one runtime set-up per process (R1), a
//! signal sent to the process (R3).
//!
//! A test binary re-runs itself (`std::env::current_exe()`) with `--exact child`; the
//! environment variable [`ROLE_ENV`] tells its `child` test which role to play. Without the
//! variable that test does nothing, so it passes in the normal run of the suite.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Selects the role of a child process.
pub const ROLE_ENV: &str = "PYO3_ASYNC_BRIDGE_TEST_CHILD";

/// How long a child may run before the test fails (and kills it).
pub const CHILD_DEADLINE: Duration = Duration::from_secs(60);

/// The role this process plays, when it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A running child playing `role`, its stdout read line by line on a helper thread.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    seen: Vec<String>,
    started: Instant,
}

/// What a finished child left.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout, line by line.
    pub stdout: Vec<String>,
    /// Its stderr.
    pub stderr: String,
}

impl Finished {
    /// Panics unless the child exited successfully and printed `line` (at the end of a line:
    /// the harness may have started that line with `test child ... `).
    pub fn assert_ok_with(&self, line: &str) {
        assert!(
            self.status.success() && self.stdout.iter().any(|l| l.ends_with(line)),
            "child failed or did not print {line:?}: {self:#?}"
        );
    }
}

/// Starts this test binary again as a child playing `role`.
pub fn spawn(role: &str) -> Running {
    let mut child = Command::new(std::env::current_exe().expect("current_exe"))
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child test process");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    // Read on its own thread, so a chatty child never blocks on a full pipe.
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err_pipe.read_to_string(&mut text);
        text
    });
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines,
        stderr,
        seen: Vec::new(),
        started: Instant::now(),
    }
}

impl Running {
    fn left(&self) -> Duration {
        CHILD_DEADLINE.saturating_sub(self.started.elapsed())
    }

    /// Waits until the child prints `line` (at the end of a line; an event, not a delay).
    ///
    /// # Panics
    /// When the child ends or the deadline passes first (the child is killed).
    pub fn wait_for_line(mut self, line: &str) -> Self {
        loop {
            match self.lines.recv_timeout(self.left()) {
                Ok(l) if l.ends_with(line) => {
                    self.seen.push(l);
                    return self;
                }
                Ok(l) => self.seen.push(l),
                Err(e) => {
                    let _ = self.child.kill();
                    let finished = self.finish();
                    panic!("child never printed {line:?} ({e}): {finished:#?}");
                }
            }
        }
    }

    /// Sends SIGINT to the child, with `kill -INT`.
    pub fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT failed: {status}");
    }

    /// Waits for the child to exit (polling `try_wait` up to the deadline, then killing it).
    pub fn finish(mut self) -> Finished {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if self.left().is_zero() {
                let _ = self.child.kill();
                break self.child.wait().expect("wait after kill");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at end-of-file.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        Finished {
            status,
            stdout: self.seen,
            stderr: self.stderr.join().unwrap_or_default(),
        }
    }
}

/// Runs a child playing `role` to its end.
pub fn run(role: &str) -> Finished {
    spawn(role).finish()
}
