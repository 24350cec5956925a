//! A throwaway PostgreSQL server for the tests, started once per test process: `initdb` into a
//! temporary folder, `pg_ctl start` on 127.0.0.1 and a free port with the socket in that
//! folder, as the `postgres` user when the tests run as root (the server refuses root), and
//! stopped with its folder removed when the process exits. Each test gets a database of its
//! own ([`database`]).
//!
//! `CARTAT_TEST_POSTGRES_URL` names a server to use instead (the tests create their databases
//! on it). Without PostgreSQL's programs a test skips with a loud message — unless
//! `CARTAT_REQUIRE_POSTGRES=1` (set by `.ci/run`), which makes that a failure.
//! Public for the integration tests, like [`crate::mock`]; nothing else uses it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Set (to anything but `0`) where a test that needs PostgreSQL must not skip: CI.
pub const REQUIRE: &str = "CARTAT_REQUIRE_POSTGRES";
/// A server to use instead of starting one: `postgres://user@127.0.0.1:5432/postgres`.
pub const URL: &str = "CARTAT_TEST_POSTGRES_URL";

/// The running server: an admin url (its `postgres` database) and, when this process started
/// it, its data folder.
#[derive(Debug)]
pub struct Server {
    pub admin_url: String,
    data: Option<PathBuf>,
    pg_ctl: Option<PathBuf>,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static DATA: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

/// The folder of PostgreSQL's programs (`initdb`, `pg_ctl`), if installed.
fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    // Debian keeps them out of PATH, one folder per major version: take the newest.
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

/// Runs `program args` as the `postgres` user when we are root, else as ourselves.
fn as_server_user(program: &Path, args: &[&str]) -> Command {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Stops the server of `data` at once and removes the folder.
fn stop_and_remove(pg_ctl: &Path, data: &Path) {
    let _ = as_server_user(
        pg_ctl,
        &[
            "-D",
            &data.to_string_lossy(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .status();
    let _ = std::fs::remove_dir_all(data);
}

extern "C" fn stop_at_exit() {
    if let Some((pg_ctl, data)) = DATA.get() {
        stop_and_remove(pg_ctl, data);
    }
}

/// Stops the servers of test processes that died without their exit hook (killed by a
/// timeout, an abort), and removes their folders: `cartat-pg-PID-…` whose PID is gone. (A
/// PID reused since by another process keeps its orphan: never stop what may be in use.)
fn stop_orphans(pg_ctl: &Path) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("cartat-pg-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        stop_and_remove(pg_ctl, &e.path());
    }
}

fn start() -> Result<Server, String> {
    if let Ok(url) = std::env::var(URL) {
        return Ok(Server {
            admin_url: url,
            data: None,
            pg_ctl: None,
        });
    }
    let bin = bindir().ok_or("no PostgreSQL programs (initdb, pg_ctl) found")?;
    stop_orphans(&bin.join("pg_ctl"));
    // A folder no other test process has (a process id alone may come back).
    let data = std::env::temp_dir().join(format!(
        "cartat-pg-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::create_dir(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&data)
            .status()
            .map_err(|e| e.to_string())?
            .success();
        if !ok {
            return Err("cannot give the data folder to the postgres user".into());
        }
    }
    let d = data.to_string_lossy().to_string();
    let out = as_server_user(
        &bin.join("initdb"),
        &[
            "-D",
            &d,
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
    )
    .output()
    .map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = free_port()?;
    let opts = format!(
        "-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    );
    let pg_ctl = bin.join("pg_ctl");
    let log = format!("{d}/server.log");
    let out = as_server_user(&pg_ctl, &["-D", &d, "-o", &opts, "-l", &log, "-w", "start"])
        .output()
        .map_err(|e| format!("pg_ctl: {e}"))?;
    if !out.status.success() {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(format!(
            "pg_ctl start failed: {}{log}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let _ = DATA.set((pg_ctl.clone(), data.clone()));
    // SAFETY: registering a plain extern "C" function with no arguments.
    unsafe { libc::atexit(stop_at_exit) };
    Ok(Server {
        admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        data: Some(data),
        pg_ctl: Some(pg_ctl),
    })
}

/// The test server, started on first use; None (after a loud message) when there is none and
/// none is required.
pub fn server() -> Option<&'static Server> {
    match SERVER.get_or_init(start) {
        Ok(s) => Some(s),
        Err(e) => {
            let required = std::env::var(REQUIRE).is_ok_and(|v| !v.is_empty() && v != "0");
            if required {
                panic!("{REQUIRE} is set, and there is no PostgreSQL server for the tests: {e}");
            }
            eprintln!(
                "\n*** SKIPPED: this test needs PostgreSQL ({e}); install it (Debian: apt-get install postgresql) or set {URL} ***\n"
            );
            None
        }
    }
}

/// A new, empty database on the test server for one test; its url. None: skip the test.
pub fn database() -> Option<String> {
    static N: AtomicU64 = AtomicU64::new(0);
    let server = server()?;
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        jiff::Timestamp::now().as_millisecond() % 1_000_000
    );
    // On a thread of its own: the client runs a runtime, which must not start inside a test's.
    let (admin_url, create) = (server.admin_url.clone(), format!("CREATE DATABASE {name}"));
    std::thread::spawn(move || {
        let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot reach the test server {admin_url}: {e}"));
        admin
            .batch_execute(&create)
            .unwrap_or_else(|e| panic!("{create}: {e}"));
    })
    .join()
    .expect("creating the test database");
    let base = server
        .admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&server.admin_url);
    Some(format!("{base}/{name}"))
}

impl Server {
    /// The data folder and `pg_ctl` of a server this process started (None for [`URL`]).
    pub fn local(&self) -> Option<(&Path, &Path)> {
        Some((self.data.as_deref()?, self.pg_ctl.as_deref()?))
    }
}
