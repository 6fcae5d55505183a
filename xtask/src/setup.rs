//! Idempotent set-up: packages, toolchain targets and services, done by the project's own code.
//!
//! Every step checks first and acts only when something is missing, so running it twice costs a
//! few process starts. Services it starts (PostgreSQL) keep running after xtask exits, as a
//! developer expects between test runs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cmd, output};

/// Debian packages the test suite needs.
const TEST_APT_PACKAGES: &[&str] = &["postgresql"];

/// Role, password and database the tests use on the local PostgreSQL cluster.
const PG_ROLE: &str = "lattice";
const PG_PASSWORD: &str = "lattice";
const PG_DATABASE: &str = "lattice_test";

/// Environment variables the set-up exports to every command xtask runs afterwards.
static EXPORTED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

pub(crate) fn exported() -> Vec<(String, String)> {
    EXPORTED.lock().map(|v| v.clone()).unwrap_or_default()
}

fn export(key: &str, value: String) {
    eprintln!("export {key}={value}");
    if let Ok(mut vars) = EXPORTED.lock() {
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_owned(), value));
    }
}

/// Everything the tests need.
pub fn all() -> Result<()> {
    rust_targets()?;
    apt(TEST_APT_PACKAGES)?;
    let url = postgres()?;
    export("LATTICE_TEST_POSTGRES_URL", url);
    node_packages()?;
    Ok(())
}

/// Where the Node interop tests live, with their `package-lock.json`.
pub(crate) const NODE_TESTS_DIR: &str = "tests/node";

/// Node.js (Debian's, unless the machine has one) and the interop tests' npm packages, exactly
/// as locked.
fn node_packages() -> Result<()> {
    let has = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has("node") || !has("npm") {
        apt(&["nodejs", "npm"])?;
    }
    let locked = std::path::Path::new(NODE_TESTS_DIR).join("package-lock.json");
    let installed = std::path::Path::new(NODE_TESTS_DIR).join("node_modules/.package-lock.json");
    let current = match (std::fs::metadata(&locked), std::fs::metadata(&installed)) {
        (Ok(l), Ok(i)) => match (l.modified(), i.modified()) {
            (Ok(l), Ok(i)) => i >= l,
            _ => false,
        },
        _ => false,
    };
    if !current {
        cmd(
            "npm",
            &["ci", "--prefix", NODE_TESTS_DIR, "--no-audit", "--no-fund"],
        )?;
    }
    Ok(())
}

/// What running the product needs: nothing beyond the Rust toolchain yet (SQLite is embedded).
pub fn for_run() -> Result<()> {
    Ok(())
}

fn rust_targets() -> Result<()> {
    let installed = output("rustup", &["target", "list", "--installed"])?;
    if !installed
        .lines()
        .any(|l| l.trim() == "wasm32-unknown-unknown")
    {
        cmd("rustup", &["target", "add", "wasm32-unknown-unknown"])?;
    }
    Ok(())
}

fn is_root() -> bool {
    output("id", &["-u"]).is_ok_and(|uid| uid.trim() == "0")
}

/// Runs `program args` as root: directly when we are root, else through `sudo -n`.
fn as_root(program: &str, args: &[&str]) -> Result<()> {
    if is_root() {
        cmd(program, args)
    } else {
        let mut full = vec!["-n", program];
        full.extend_from_slice(args);
        cmd("sudo", &full).context("root is needed to install packages (sudo -n failed)")
    }
}

fn apt_installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", pkg])
        .is_ok_and(|s| s.contains("install ok installed"))
}

fn apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    as_root("apt-get", &["update", "-q"])?;
    let mut args = vec![
        "-o",
        "DPkg::Lock::Timeout=300",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
    ];
    args.extend(missing.iter().copied());
    // DEBIAN_FRONTEND keeps apt from asking questions when CI has no stdin.
    as_root(
        "env",
        &[&["DEBIAN_FRONTEND=noninteractive", "apt-get"], &args[..]].concat(),
    )
}

/// A cluster as `pg_lsclusters` reports it.
struct Cluster {
    version: String,
    name: String,
    port: String,
    online: bool,
}

fn clusters() -> Result<Vec<Cluster>> {
    let text = output("pg_lsclusters", &["--no-header"])?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() >= 4).then(|| Cluster {
                version: f[0].to_owned(),
                name: f[1].to_owned(),
                port: f[2].to_owned(),
                online: f[3].starts_with("online"),
            })
        })
        .collect())
}

fn newest_postgres_version() -> Result<String> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (/usr/lib/postgresql is missing)")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
        .last()
        .map(u32::to_string)
        .context("no PostgreSQL version under /usr/lib/postgresql")
}

/// Runs SQL as the `postgres` superuser and returns the output.
fn psql_superuser(port: &str, sql: &str) -> Result<String> {
    let args = [
        "-u", "postgres", "--", "psql", "-X", "-q", "-p", port, "-tAc", sql,
    ];
    if is_root() {
        output("runuser", &args)
    } else {
        let mut full = vec!["-n"];
        full.extend_from_slice(&args);
        output("sudo", &full)
    }
}

/// Makes sure a local cluster runs with the test role and database; returns the URL.
fn postgres() -> Result<String> {
    let version = newest_postgres_version()?;
    let existing = clusters()?;
    let cluster = match existing.into_iter().find(|c| c.version == version) {
        Some(c) => c,
        None => {
            as_root("pg_createcluster", &[&version, "main"])?;
            clusters()?
                .into_iter()
                .find(|c| c.version == version)
                .context("pg_createcluster did not create a cluster")?
        }
    };
    if !cluster.online {
        as_root("pg_ctlcluster", &[&cluster.version, &cluster.name, "start"])?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while output(
        "pg_isready",
        &["-q", "-h", "127.0.0.1", "-p", &cluster.port],
    )
    .is_err()
    {
        if Instant::now() > deadline {
            bail!("PostgreSQL on port {} did not become ready", cluster.port);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let has_role = psql_superuser(
        &cluster.port,
        &format!("SELECT 1 FROM pg_roles WHERE rolname = '{PG_ROLE}'"),
    )?;
    if has_role.trim() != "1" {
        psql_superuser(
            &cluster.port,
            &format!("CREATE ROLE {PG_ROLE} LOGIN PASSWORD '{PG_PASSWORD}' CREATEDB"),
        )?;
    }
    let has_db = psql_superuser(
        &cluster.port,
        &format!("SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"),
    )?;
    if has_db.trim() != "1" {
        psql_superuser(
            &cluster.port,
            &format!("CREATE DATABASE {PG_DATABASE} OWNER {PG_ROLE}"),
        )?;
    }
    let url = format!(
        "postgres://{PG_ROLE}:{PG_PASSWORD}@127.0.0.1:{}/{PG_DATABASE}",
        cluster.port
    );
    // Prove the URL works over TCP with password authentication, as the tests will use it.
    output("psql", &["-X", "-q", &url, "-tAc", "SELECT 1"])
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(url)
}
