//! Idempotent set-up: packages, toolchain targets and services, done by the project's own code.
//!
//! Every step checks first and acts only when something is missing, so running it twice costs a
//! few process starts. Services it starts (PostgreSQL) keep running after xtask exits, as a
//! developer expects between test runs. Redis is only installed: the tests start (and restart)
//! their own `redis-server` processes, so they need the binary, not a running service.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cmd, output};

/// Debian packages the test suite needs: PostgreSQL, Redis (the cluster tests; `redis-server`
/// brings `redis-cli` with `redis-tools`), and Chromium with its WebDriver for the browser
/// tests of the wasm client.
const TEST_APT_PACKAGES: &[&str] = &["postgresql", "redis-server", "chromium", "chromium-driver"];

/// Role, password and database the tests use on the local PostgreSQL cluster.
const PG_ROLE: &str = "lattice";
const PG_PASSWORD: &str = "lattice";
const PG_DATABASE: &str = "lattice_test";
/// The database `cargo xtask cluster` runs on; it is kept between runs, as `lattice.db` is by
/// `cargo xtask run`.
const PG_CLUSTER_DATABASE: &str = "lattice_cluster";

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
pub(crate) fn all() -> Result<()> {
    rust_targets()?;
    apt(TEST_APT_PACKAGES)?;
    // Every test run starts on an empty database: one left behind by another build (a newer
    // schema, say, which this build rightly refuses to open) must not fail this run.
    let url = postgres_database_fresh(PG_DATABASE)?;
    export("LATTICE_TEST_POSTGRES_URL", url);
    let redis = redis_server()?;
    export(
        "LATTICE_TEST_REDIS_SERVER",
        redis.to_string_lossy().into_owned(),
    );
    node_packages()?;
    web_tools()?;
    let python = grpc_python()?;
    export(
        "LATTICE_TEST_GRPC_PYTHON",
        python.to_string_lossy().into_owned(),
    );
    Ok(())
}

/// The virtual environment of the gRPC interop test (`server/tests/grpc.rs`), under `target/`.
const GRPC_VENV: &str = "target/grpc-python";

/// The Python packages of the gRPC interop test, exactly these versions (`grpcio-tools` 1.76
/// wants `protobuf` 6.31.1 or later, below 7).
const GRPC_PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("grpcio", "1.76.0"),
    ("grpcio-tools", "1.76.0"),
    ("protobuf", "6.33.5"),
];

/// A Python virtual environment with [`GRPC_PYTHON_PACKAGES`] (from PyPI), for the test that
/// talks to the gRPC service with `grpcio` and stubs `grpc_tools.protoc` generates; returns its
/// interpreter. Installs only what is missing or of another version.
fn grpc_python() -> Result<PathBuf> {
    let venv = std::env::current_dir()?.join(GRPC_VENV);
    let python = venv.join("bin/python");
    if !python.is_file() {
        if !has_program("python3") {
            apt(&["python3"])?;
        }
        let dir = venv.to_string_lossy().into_owned();
        if cmd("python3", &["-m", "venv", &dir]).is_err() {
            // Debian splits `venv` (and `ensurepip`) out of python3.
            apt(&["python3-venv"])?;
            cmd("python3", &["-m", "venv", "--clear", &dir])?;
        }
    }
    let python_str = python.to_string_lossy().into_owned();
    let check = GRPC_PYTHON_PACKAGES
        .iter()
        .map(|(name, version)| format!("v('{name}') == '{version}'"))
        .collect::<Vec<_>>()
        .join(" and ");
    let script = format!(
        "from importlib.metadata import version as v\nimport sys\nsys.exit(0 if {check} else 1)"
    );
    let installed = std::process::Command::new(&python)
        .args(["-c", &script])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let pins: Vec<String> = GRPC_PYTHON_PACKAGES
            .iter()
            .map(|(name, version)| format!("{name}=={version}"))
            .collect();
        let mut args = vec!["-m", "pip", "install", "--disable-pip-version-check", "-q"];
        args.extend(pins.iter().map(String::as_str));
        cmd(&python_str, &args)?;
    }
    Ok(python)
}

/// Where the wasm client's check tools (TypeScript) live, with their `package-lock.json`.
pub(crate) const WEB_TOOLS_DIR: &str = "client-wasm/js";

/// What building the browser client needs: the wasm32 target, `wasm-bindgen` of exactly the
/// version in Cargo.lock, and the locked npm tools that check its TypeScript types.
pub(crate) fn web_tools() -> Result<()> {
    rust_targets()?;
    wasm_bindgen_cli()?;
    if !has_program("node") || !has_program("npm") {
        apt(&["nodejs", "npm"])?;
    }
    npm_ci(WEB_TOOLS_DIR)
}

/// The version of the `wasm-bindgen` crate in Cargo.lock; the CLI must match it exactly, or
/// the generated glue does not fit the compiled module.
pub(crate) fn locked_wasm_bindgen_version() -> Result<String> {
    let lock = std::fs::read_to_string("Cargo.lock").context("cannot read Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "name = \"wasm-bindgen\"" {
            let version = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("version = \""))
                .and_then(|v| v.strip_suffix('"'))
                .context("Cargo.lock: wasm-bindgen has no version line")?;
            return Ok(version.to_owned());
        }
    }
    bail!("Cargo.lock does not contain the wasm-bindgen crate")
}

/// Installs `wasm-bindgen-cli` (which brings `wasm-bindgen-test-runner`) from crates.io unless
/// the installed one is the locked version.
fn wasm_bindgen_cli() -> Result<()> {
    let want = locked_wasm_bindgen_version()?;
    let have = output("wasm-bindgen", &["--version"]).unwrap_or_default();
    let runner = has_program("wasm-bindgen-test-runner");
    if have.split_whitespace().nth(1) == Some(want.as_str()) && runner {
        return Ok(());
    }
    eprintln!(
        "installing wasm-bindgen-cli {want} (found {:?})",
        have.trim()
    );
    cmd(
        "cargo",
        &["install", "wasm-bindgen-cli", "--version", &want, "--force"],
    )
}

/// What `cargo xtask fuzz` needs: a nightly toolchain (cargo-fuzz builds with `-Z` flags and
/// sanitizers) and `cargo-fuzz` itself, installed from crates.io when missing.
pub(crate) fn fuzz_tools() -> Result<()> {
    if output("rustup", &["run", "nightly", "rustc", "--version"]).is_err() {
        eprintln!("no nightly toolchain; installing one (cargo fuzz needs it)");
        cmd(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )
        .context(
            "cargo fuzz needs a nightly Rust toolchain and none could be installed \
             (`rustup toolchain install nightly`)",
        )?;
    }
    if output("cargo", &["+nightly", "fuzz", "--version"]).is_err() {
        cmd("cargo", &["install", "cargo-fuzz", "--locked"])
            .context("cargo-fuzz is missing and could not be installed from crates.io")?;
    }
    Ok(())
}

/// Whether `program --version` runs.
pub(crate) fn has_program(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `npm ci` in `dir` unless its installed packages are newer than its lock file.
pub(crate) fn npm_ci(dir: &str) -> Result<()> {
    let locked = std::path::Path::new(dir).join("package-lock.json");
    let installed = std::path::Path::new(dir).join("node_modules/.package-lock.json");
    let current = match (std::fs::metadata(&locked), std::fs::metadata(&installed)) {
        (Ok(l), Ok(i)) => match (l.modified(), i.modified()) {
            (Ok(l), Ok(i)) => i >= l,
            _ => false,
        },
        _ => false,
    };
    if !current {
        cmd("npm", &["ci", "--prefix", dir, "--no-audit", "--no-fund"])?;
    }
    Ok(())
}

/// Where the Node interop tests live, with their `package-lock.json`.
pub(crate) const NODE_TESTS_DIR: &str = "tests/node";

/// Node.js (Debian's, unless the machine has one) and the interop tests' npm packages, exactly
/// as locked.
fn node_packages() -> Result<()> {
    if !has_program("node") || !has_program("npm") {
        apt(&["nodejs", "npm"])?;
    }
    npm_ci(NODE_TESTS_DIR)
}

/// What `cargo xtask chaos` needs: PostgreSQL (the shared cluster for the kill scenario, and
/// its binaries for the private cluster the restart scenario runs), exported as for the tests.
pub(crate) fn for_chaos() -> Result<()> {
    apt(&["postgresql"])?;
    let url = postgres()?;
    export("LATTICE_TEST_POSTGRES_URL", url);
    Ok(())
}

/// What `cargo xtask bench cluster` needs: PostgreSQL and Redis, exported as for the tests.
pub(crate) fn for_bench_cluster() -> Result<()> {
    apt(&["postgresql", "redis-server"])?;
    export("LATTICE_TEST_POSTGRES_URL", postgres()?);
    export(
        "LATTICE_TEST_REDIS_SERVER",
        redis_server()?.to_string_lossy().into_owned(),
    );
    Ok(())
}

/// What `cargo xtask cluster` needs: PostgreSQL running with the cluster's database (its URL)
/// and the `redis-server` binary (its absolute path).
pub(crate) fn for_cluster() -> Result<(String, PathBuf)> {
    apt(&["postgresql", "redis-server"])?;
    let url = postgres_database(PG_CLUSTER_DATABASE)?;
    Ok((url, redis_server()?))
}

/// Checks that `redis-server` and `redis-cli` run and returns the absolute path of
/// `redis-server`, which tests start themselves.
fn redis_server() -> Result<PathBuf> {
    for program in ["redis-server", "redis-cli"] {
        let version = output(program, &["--version"]).with_context(|| {
            format!(
                "`{program} --version` failed: Redis is missing (Debian package redis-server; \
                 `cargo xtask setup` installs it)"
            )
        })?;
        eprintln!("{}", version.trim());
    }
    which("redis-server").context("redis-server runs but is not found on PATH")
}

/// The first `program` on PATH, as an absolute path.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .and_then(|path| std::path::absolute(path).ok())
}

/// What running the product needs: nothing beyond the Rust toolchain yet (SQLite is embedded).
pub(crate) fn for_run() -> Result<()> {
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

pub(crate) fn apt(packages: &[&str]) -> Result<()> {
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
    postgres_database(PG_DATABASE)
}

/// Makes sure a local cluster runs with the test role and a database `database` it owns;
/// returns the URL.
fn postgres_database(database: &str) -> Result<String> {
    postgres_database_with(database, false)
}

/// As [`postgres_database`], but drops `database` first if it exists, ending its sessions.
fn postgres_database_fresh(database: &str) -> Result<String> {
    postgres_database_with(database, true)
}

fn postgres_database_with(database: &str, fresh: bool) -> Result<String> {
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
    if fresh {
        // The per-test databases (`lattice_t_*` from Rust, `lattice_n_*` from Node) of runs
        // that were killed before they could drop theirs go too.
        let leftovers = psql_superuser(
            &cluster.port,
            "SELECT datname FROM pg_database WHERE datname LIKE 'lattice\\_t\\_%' \
             OR datname LIKE 'lattice\\_n\\_%'",
        )?;
        let leftovers: Vec<&str> = leftovers.split_whitespace().collect();
        eprintln!(
            "dropping the test database {database} and {} per-test databases left by earlier runs",
            leftovers.len()
        );
        for name in std::iter::once(database).chain(leftovers) {
            psql_superuser(
                &cluster.port,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )?;
        }
    }
    let has_db = psql_superuser(
        &cluster.port,
        &format!("SELECT 1 FROM pg_database WHERE datname = '{database}'"),
    )?;
    if has_db.trim() != "1" {
        psql_superuser(
            &cluster.port,
            &format!("CREATE DATABASE {database} OWNER {PG_ROLE}"),
        )?;
    }
    let url = format!(
        "postgres://{PG_ROLE}:{PG_PASSWORD}@127.0.0.1:{}/{database}",
        cluster.port
    );
    // Prove the URL works over TCP with password authentication, as the tests will use it.
    output("psql", &["-X", "-q", &url, "-tAc", "SELECT 1"])
        .with_context(|| format!("cannot connect to {url}"))?;
    Ok(url)
}
