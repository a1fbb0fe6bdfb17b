//! The built `keygate` binary as a child process: `KeygateServe::spawn` starts `keygate serve`
//! with the given flags and environment, waits for its `listening on` line(s) on stdout (port 0
//! works), and kills it on drop; `stop()` sends SIGTERM and returns the exit status.
//! `keygate(args, envs)` runs any subcommand to completion (for exit-code tests).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long the binary may take to print its listening line(s) or to exit.
const PATIENCE: Duration = Duration::from_secs(30);

/// The path of the `keygate` binary Cargo built for this test run.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_keygate")
}

/// A command for the binary with a clean `KEYGATE_*` / `STACK_*` environment, so a developer's
/// shell settings cannot change what a test sees.
pub fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYGATE_") || name.starts_with("STACK_") {
            command.env_remove(name);
        }
    }
    command.args(args);
    for (name, value) in envs {
        command.env(name, value);
    }
    command
}

/// Runs `keygate ARGS…` to completion (bounded by `PATIENCE`) and returns its output.
pub fn keygate(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut child = command(args, envs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keygate");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if child.try_wait().expect("wait for keygate").is_some() {
            return child.wait_with_output().expect("collect keygate output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect keygate output");
            panic!(
                "keygate {args:?} did not exit within {PATIENCE:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `keygate serve`. Killed (SIGKILL) on drop unless `stop()` ended it first.
pub struct KeygateServe {
    child: Option<Child>,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
}

/// Why `try_spawn` got no running server: the process exited first.
#[derive(Debug)]
pub struct SpawnFailure {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl KeygateServe {
    /// Starts `keygate serve ARGS…` with `ENVS` and waits until it listens. Panics (with the
    /// binary's stderr) if it exits or stays silent instead.
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> KeygateServe {
        match Self::try_spawn(args, envs) {
            Ok(server) => server,
            Err(failure) => panic!(
                "keygate serve {args:?} exited with {} before listening; stderr:\n{}",
                failure.status, failure.stderr
            ),
        }
    }

    /// Starts `keygate serve ARGS…` with `ENVS`: the running server once it prints its main
    /// `listening on` line, or how it exited before that.
    pub fn try_spawn(args: &[&str], envs: &[(&str, &str)]) -> Result<KeygateServe, SpawnFailure> {
        let mut full = vec!["serve"];
        full.extend_from_slice(args);
        let mut child = command(&full, envs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keygate serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr pipe");
        let err_sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                err_sink
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push_str(&text);
            }
        });
        // The binary prints the admin line (if any) before the main one, so the main line
        // means every listener is up.
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        let out_pipe = child.stdout.take().expect("stdout pipe");
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                // The receiver may be gone once the listeners are known; keep draining.
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + PATIENCE;
        let mut admin_addr = None;
        let addr = loop {
            match lines_rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("keygate: admin listening on http://") {
                        admin_addr = Some(rest.trim().parse().expect("admin address"));
                    } else if let Some(rest) = line.strip_prefix("keygate: listening on http://") {
                        break rest.trim().parse().expect("listening address");
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if let Some(status) = child.try_wait().expect("wait for keygate") {
                // Let the stderr reader catch up with what the process wrote before exiting.
                std::thread::sleep(Duration::from_millis(100));
                let stderr = stderr
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                return Err(SpawnFailure { status, stderr });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                panic!("keygate serve printed no listening line within {PATIENCE:?}; stderr:\n{stderr}");
            }
        };
        Ok(KeygateServe {
            child: Some(child),
            addr,
            admin_addr,
            stderr,
        })
    }

    /// The main listener (`/v1/authz`, the key API, and the ops endpoints without an admin
    /// listener).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener, when `--admin-listen` was given.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// `http://ADDR` of the main listener followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything the server wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().expect("wait for keygate").is_none(),
            None => false,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM")
    }

    /// Sends `signal` (a name for `kill -s`, e.g. `TERM`, `INT`) and waits (bounded) for the
    /// exit; returns the exit status.
    pub fn signal(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("keygate serve already stopped");
        let sent = Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -s {signal} failed");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for keygate") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("keygate serve did not exit within {PATIENCE:?} of SIG{signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for KeygateServe {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
