//! A real nginx on loopback: [`nginx_bin`] finds the binary (or skips the test, or panics under
//! `KEYGATE_REQUIRE_SERVICES=1`), [`Nginx::start`] runs it in the foreground on a free port with
//! everything (config, pid, logs, temp files) in a temporary directory, and
//! [`keygate_site`] is the documented keygate setup (`docs/edge/nginx.conf`) pointed at test
//! addresses.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The documented nginx setup, exactly as the README shows it.
pub const KEYGATE_SITE: &str = include_str!("../../docs/edge/nginx.conf");

/// How long nginx may take to listen, or to exit after SIGTERM.
const PATIENCE: Duration = Duration::from_secs(10);

/// The nginx binary to test with: `NGINX_BIN`, else `nginx` on `PATH` or in `/usr/sbin`. `None`
/// (after a skip note) when there is none or it lacks the auth_request module; a panic instead
/// when `KEYGATE_REQUIRE_SERVICES=1`, as in CI.
pub fn nginx_bin() -> Option<PathBuf> {
    let found = match std::env::var_os("NGINX_BIN").filter(|v| !v.is_empty()) {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
            .map(|dir| dir.join("nginx"))
            .find(|candidate| candidate.is_file()),
    };
    let problem = match &found {
        None => "nginx not found (install it: apt-get install nginx; or set NGINX_BIN)".to_owned(),
        Some(bin) => match Command::new(bin).arg("-V").output() {
            Err(e) => format!("{} does not run: {e}", bin.display()),
            // `nginx -V` prints its configure arguments on stderr.
            Ok(out)
                if !String::from_utf8_lossy(&out.stderr).contains("http_auth_request_module") =>
            {
                format!("{} lacks the auth_request module", bin.display())
            }
            Ok(_) => return found,
        },
    };
    if std::env::var("KEYGATE_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{problem}, and KEYGATE_REQUIRE_SERVICES=1");
    }
    super::skip_note(&problem);
    None
}

/// [`KEYGATE_SITE`] with keygate at `keygate`, the app at `app`, and the placeholder
/// `listen {LISTEN};` for [`Nginx::start`].
pub fn keygate_site(keygate: SocketAddr, app: SocketAddr) -> String {
    replace_all(
        KEYGATE_SITE,
        &[
            ("server 127.0.0.1:8080;", &format!("server {keygate};"), 1),
            ("http://127.0.0.1:3000", &format!("http://{app}"), 2),
            ("listen 80;", "listen {LISTEN};", 1),
        ],
    )
}

/// `text` with each `(from, to, times)` replaced; panics unless `from` occurs exactly `times`.
pub fn replace_all(text: &str, edits: &[(&str, &str, usize)]) -> String {
    let mut text = text.to_owned();
    for (from, to, times) in edits {
        assert_eq!(text.matches(from).count(), *times, "{from:?} in the config");
        text = text.replace(from, to);
    }
    text
}

/// A running nginx. Stopped (SIGTERM, then SIGKILL) on drop.
pub struct Nginx {
    child: Option<Child>,
    dir: TempDir,
    addr: SocketAddr,
}

impl Nginx {
    /// Runs `bin` with `http` as the body of its `http {}` block; `{LISTEN}` in it becomes a free
    /// loopback address. Checks the config with `nginx -t` first and waits until the port
    /// answers; panics (with the error log) when nginx refuses the config or exits.
    pub fn start(bin: &Path, http: &str) -> Nginx {
        // A port freed just now can be taken by someone else before nginx binds it: try again.
        for attempt in 1.. {
            let dir = tempfile::tempdir().expect("temp dir for nginx");
            for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                std::fs::create_dir_all(dir.path().join("tmp").join(sub)).expect("nginx temp dir");
            }
            let addr = free_port();
            let config = config(dir.path(), &http.replace("{LISTEN}", &addr.to_string()));
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, config).expect("write nginx.conf");
            let check = command(bin, dir.path())
                .arg("-t")
                .output()
                .expect("run nginx -t");
            assert!(
                check.status.success(),
                "nginx -t refused the config:\n{}\n{}",
                String::from_utf8_lossy(&check.stderr),
                std::fs::read_to_string(&conf_path).unwrap_or_default()
            );
            let child = command(bin, dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nginx");
            let mut nginx = Nginx {
                child: Some(child),
                dir,
                addr,
            };
            match nginx.wait_listening() {
                Ok(()) => return nginx,
                Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
                Err(log) => panic!("nginx did not start; error.log:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    /// Polls the port until nginx accepts; the error log if it exits or stays silent.
    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("running nginx");
            if child.try_wait().expect("wait for nginx").is_some() || Instant::now() > deadline {
                return Err(self.error_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Its error log so far (level `info`).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM, so the master takes its worker down with it (SIGKILL would orphan it).
        let _ = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log`.
fn command(bin: &Path, dir: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"));
    command
}

/// A loopback address with a port free right now.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// A whole nginx.conf around `http`: foreground, one worker, every path inside `dir`.
fn config(dir: &Path, http: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {d}/tmp/body;\n\
         proxy_temp_path {d}/tmp/proxy;\n\
         fastcgi_temp_path {d}/tmp/fastcgi;\n\
         uwsgi_temp_path {d}/tmp/uwsgi;\n\
         scgi_temp_path {d}/tmp/scgi;\n\
         {http}\n\
         }}\n"
    )
}
