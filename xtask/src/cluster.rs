//! `cargo xtask cluster [--nodes N] [--port P]`: a Lattice cluster on this machine, to try by
//! hand. N `lattice serve` nodes (default 3) listen on 127.0.0.1:P, P+1, … (P defaults to 8081)
//! and share one PostgreSQL database (`lattice_cluster`, kept between runs), one Redis on
//! 127.0.0.1:6380 (no persistence: it only carries fan-out and presence) and one auth secret
//! generated for the run, so that a token works on every node. Each node serves the demo; the
//! command prints a demo link per node and an admin token, then runs until Ctrl-C.
//!
//! Stopping in order (every node's graceful shutdown, then Redis) needs Ctrl-C to reach xtask
//! without ending it, and xtask has no signal handler: the workspace forbids `unsafe` and no
//! dependency of xtask provides one. So once set-up and builds are done, xtask re-executes
//! itself with SIGINT and SIGHUP ignored (`env --ignore-signal`, inherited across `exec`). A
//! sentinel child with default handling stays in the terminal's process group: when Ctrl-C (or
//! a hang-up) ends it, xtask sends SIGTERM to each node, waits for it, then stops Redis. The
//! nodes stay in the terminal's group too, so that a signal to the whole group (Ctrl-C, or a
//! `timeout` that ends xtask) reaches them even if xtask is gone; Redis gets a group of its own,
//! out of the terminal's reach, so that it outlives the nodes' shutdown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{chaos, setup, step, web};

/// The internal command the set-up re-executes into; not for people to type.
pub(crate) const SUPERVISE_COMMAND: &str = "cluster-supervise";

const USAGE: &str = "cargo xtask cluster [--nodes N] [--port P]  (default: 3 nodes from port 8081)";
const DEFAULT_NODES: u16 = 3;
const DEFAULT_FIRST_PORT: u16 = 8081;
/// More nodes than this is a load test, not something to click through.
const MAX_NODES: u16 = 32;
/// Redis's port: fixed, so that a developer can point `redis-cli -p 6380` at it.
const REDIS_PORT: u16 = 6380;
/// How long a node may take from its start to answering `/readyz` 200 (migrations included).
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(60);
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL. Longer than the
/// server's default shutdown deadline, which bounds its own flush.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// How often the supervisor looks at its children.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Lifetime of the printed tokens: as long as someone might keep a tab open.
const TOKEN_TTL: &str = "7d";
/// Bytes of randomness in the generated auth secret (the server needs at least 32).
const SECRET_BYTES: usize = 32;

/// `cargo xtask cluster`: set-up and builds, then the supervisor (see the module docs).
pub(crate) fn run(args: &[String]) -> Result<()> {
    let shape = Shape::parse(args)?;
    let (database_url, redis_server) = step("set-up (PostgreSQL, Redis)", setup::for_cluster)?;
    step(
        "release server (cargo build --release --bin lattice)",
        chaos::build_server,
    )?;
    step("browser client and demo (build-web)", web::build)?;
    let lattice = web::target_dir()?.join("release").join("lattice");
    let web_dir = web::demo_dir()?;
    let xtask = std::env::current_exe().context("cannot find xtask's own executable")?;
    let error = Command::new("env")
        .arg("--ignore-signal=INT,HUP")
        .arg(xtask)
        .arg(SUPERVISE_COMMAND)
        .args(["--nodes", &shape.nodes.to_string()])
        .args(["--port", &shape.first_port.to_string()])
        .arg("--database-url")
        .arg(&database_url)
        .arg("--redis-server")
        .arg(&redis_server)
        .arg("--lattice")
        .arg(&lattice)
        .arg("--web-dir")
        .arg(&web_dir)
        .exec();
    Err(error).context("could not re-execute xtask under `env --ignore-signal=INT,HUP`")
}

/// How many nodes, from which port.
#[derive(Debug, Clone, Copy)]
struct Shape {
    nodes: u16,
    first_port: u16,
}

impl Shape {
    fn parse(args: &[String]) -> Result<Shape> {
        let mut shape = Shape {
            nodes: DEFAULT_NODES,
            first_port: DEFAULT_FIRST_PORT,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = |name: &str| -> Result<u16> {
                let v = it
                    .next()
                    .with_context(|| format!("{name} needs a value; {USAGE}"))?;
                v.parse()
                    .with_context(|| format!("{name} {v}: not a number; {USAGE}"))
            };
            match flag.as_str() {
                "--nodes" => shape.nodes = value("--nodes")?,
                "--port" => shape.first_port = value("--port")?,
                "-h" | "--help" => {
                    eprintln!("usage: {USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown flag {other}; {USAGE}"),
            }
        }
        if !(1..=MAX_NODES).contains(&shape.nodes) {
            bail!("--nodes must be between 1 and {MAX_NODES}");
        }
        if shape.first_port == 0 || shape.first_port.checked_add(shape.nodes - 1).is_none() {
            bail!(
                "--port {} with {} nodes leaves the port range",
                shape.first_port,
                shape.nodes
            );
        }
        Ok(shape)
    }

    fn ports(self) -> impl Iterator<Item = u16> {
        (0..self.nodes).map(move |i| self.first_port + i)
    }
}

/// What the set-up hands to the supervisor.
#[derive(Debug)]
struct Plan {
    shape: Shape,
    database_url: String,
    redis_server: PathBuf,
    lattice: PathBuf,
    web_dir: PathBuf,
}

impl Plan {
    fn parse(args: &[String]) -> Result<Plan> {
        let mut shape_args = Vec::new();
        let (mut database_url, mut redis_server, mut lattice, mut web_dir) =
            (None, None, None, None);
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .with_context(|| format!("{SUPERVISE_COMMAND}: {flag} needs a value"))?
                .clone();
            match flag.as_str() {
                "--nodes" | "--port" => shape_args.extend([flag.clone(), value]),
                "--database-url" => database_url = Some(value),
                "--redis-server" => redis_server = Some(PathBuf::from(value)),
                "--lattice" => lattice = Some(PathBuf::from(value)),
                "--web-dir" => web_dir = Some(PathBuf::from(value)),
                other => bail!("{SUPERVISE_COMMAND}: unknown flag {other}"),
            }
        }
        let missing = |name: &str| format!("{SUPERVISE_COMMAND}: {name} is missing");
        Ok(Plan {
            shape: Shape::parse(&shape_args)?,
            database_url: database_url.with_context(|| missing("--database-url"))?,
            redis_server: redis_server.with_context(|| missing("--redis-server"))?,
            lattice: lattice.with_context(|| missing("--lattice"))?,
            web_dir: web_dir.with_context(|| missing("--web-dir"))?,
        })
    }
}

/// Writes a line to stderr. Never panics: after a hang-up the terminal is gone, and the
/// supervisor must still stop its children.
fn say(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes a line to stdout, which may be gone just as stderr may.
fn print(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A child process whose output is copied to ours, each line prefixed with its name.
#[derive(Debug)]
struct Process {
    name: String,
    child: Child,
    copiers: Vec<JoinHandle<()>>,
}

impl Process {
    /// Starts `command`; in a process group of its own (out of reach of the terminal's
    /// signals) when `own_group`.
    fn spawn(name: &str, command: &mut Command, own_group: bool) -> Result<Process> {
        if own_group {
            command.process_group(0);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {name} ({command:?})"))?;
        let mut copiers = Vec::new();
        if let Some(out) = child.stdout.take() {
            copiers.push(copy_lines(name, out, |line| print(line)));
        }
        if let Some(err) = child.stderr.take() {
            copiers.push(copy_lines(name, err, |line| say(line)));
        }
        Ok(Process {
            name: name.to_owned(),
            child,
            copiers,
        })
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL if it has not exited after `STOP_TIMEOUT`.
    fn stop(&mut self) {
        if self.exited().is_none() {
            let pid = self.child.id().to_string();
            let sent = Command::new("kill")
                .args(["-TERM", &pid])
                .stderr(Stdio::null())
                .status();
            if !sent.is_ok_and(|s| s.success()) {
                let _ = self.child.kill();
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            if Instant::now() > deadline {
                say(format_args!(
                    "{} did not stop within {}s of SIGTERM; killing it",
                    self.name,
                    STOP_TIMEOUT.as_secs()
                ));
                let _ = self.child.kill();
                match self.child.wait() {
                    Ok(status) => break status,
                    Err(_) => return,
                }
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        for copier in self.copiers.drain(..) {
            let _ = copier.join();
        }
        say(format_args!("{} stopped ({status})", self.name));
    }
}

/// Copies `input` line by line through `write`, prefixed with `name`.
fn copy_lines(
    name: &str,
    input: impl Read + Send + 'static,
    write: fn(&dyn std::fmt::Display),
) -> JoinHandle<()> {
    let prefix = format!("{name:>6} |");
    std::thread::spawn(move || {
        for line in BufReader::new(input).lines() {
            match line {
                Ok(line) => write(&format_args!("{prefix} {line}")),
                Err(_) => break,
            }
        }
    })
}

/// Everything the supervisor started; dropping it stops what still runs, nodes first.
#[derive(Debug)]
struct Cluster {
    nodes: Vec<Process>,
    redis: Option<Process>,
    sentinel: Option<Child>,
}

impl Cluster {
    /// Whether Ctrl-C (or a hang-up) has ended the sentinel.
    fn interrupted(&mut self) -> bool {
        self.sentinel
            .as_mut()
            .is_some_and(|s| s.try_wait().ok().flatten().is_some())
    }

    /// The first child that has exited, with its status.
    fn exited(&mut self) -> Option<(String, ExitStatus)> {
        self.nodes
            .iter_mut()
            .chain(self.redis.as_mut())
            .find_map(|p| p.exited().map(|status| (p.name.clone(), status)))
    }

    /// Polls `ready` until it holds, failing when a child exits or Ctrl-C comes first.
    fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !ready() {
            if let Some((name, status)) = self.exited() {
                bail!("{name} exited ({status}) before {what}");
            }
            if self.interrupted() {
                bail!("interrupted while waiting for {what}");
            }
            if Instant::now() > deadline {
                bail!("timed out after {}s waiting for {what}", timeout.as_secs());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }

    fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        self.nodes.clear();
        if let Some(mut redis) = self.redis.take() {
            redis.stop();
        }
        if let Some(mut sentinel) = self.sentinel.take() {
            let _ = sentinel.kill();
            let _ = sentinel.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The re-executed xtask: starts Redis and the nodes, prints where they are, waits for Ctrl-C
/// and stops them.
pub(crate) fn supervise(args: &[String]) -> Result<()> {
    let plan = Plan::parse(args)?;
    let mut cluster = Cluster {
        sentinel: Some(
            Command::new("env")
                .args(["--default-signal=INT,HUP", "sleep", "infinity"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("could not start the sentinel (`env … sleep infinity`)")?,
        ),
        nodes: Vec::new(),
        redis: None,
    };
    let redis_addr = SocketAddr::from(([127, 0, 0, 1], REDIS_PORT));
    let node_addrs: Vec<SocketAddr> = plan
        .shape
        .ports()
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .collect();
    for addr in std::iter::once(&redis_addr).chain(&node_addrs) {
        if TcpStream::connect_timeout(addr, Duration::from_secs(1)).is_ok() {
            bail!(
                "something already listens on {addr} (another `cargo xtask cluster`?); \
                 stop it or choose other ports with --port"
            );
        }
    }

    let port = REDIS_PORT.to_string();
    cluster.redis = Some(Process::spawn(
        "redis",
        Command::new(&plan.redis_server).args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--loglevel",
            "warning",
        ]),
        true,
    )?);
    cluster.wait_until(
        &format!("Redis to answer PING on {redis_addr}"),
        REDIS_READY_TIMEOUT,
        || redis_ping(redis_addr),
    )?;
    let redis_url = format!("redis://{redis_addr}");

    let secret = generate_secret()?;
    for (i, addr) in node_addrs.iter().enumerate() {
        let name = format!("node{}", i + 1);
        cluster.nodes.push(Process::spawn(
            &name,
            Command::new(&plan.lattice)
                .arg("serve")
                .args(["--bind", &addr.to_string()])
                .args(["--database-url", &plan.database_url])
                .args(["--redis-url", &redis_url])
                .arg("--web-dir")
                .arg(&plan.web_dir)
                // The environment, not the command line, which other local users can read.
                .env("LATTICE_AUTH_SECRET", &secret),
            false,
        )?);
    }
    for (i, addr) in node_addrs.iter().enumerate() {
        cluster.wait_until(
            &format!("node{} to answer GET /readyz on {addr}", i + 1),
            NODE_READY_TIMEOUT,
            || http_status(*addr, "/readyz") == Some(200),
        )?;
    }

    let demo = mint(&plan.lattice, &secret, &["demo", "demo/*"], "write", "demo")?;
    let admin = mint(&plan.lattice, &secret, &["*"], "admin", "admin")?;
    print(format_args!(
        "\ncluster: {} nodes, one PostgreSQL database ({}), fan-out through {redis_url}",
        node_addrs.len(),
        redacted(&plan.database_url)
    ));
    for (i, addr) in node_addrs.iter().enumerate() {
        print(format_args!(
            "  node{}: http://{addr}/?doc=demo&token={demo}",
            i + 1
        ));
    }
    print(format_args!(
        "  admin token (every node, /admin): {admin}\n\
         Open the demo on two nodes side by side: edits and presence cross between them.\n\
         Ctrl-C stops the nodes, then Redis.\n"
    ));

    loop {
        if cluster.interrupted() {
            say("\nstopping the cluster: SIGTERM to each node, then Redis");
            cluster.stop();
            return Ok(());
        }
        if let Some((name, status)) = cluster.exited() {
            say(format_args!(
                "\n{name} exited on its own ({status}); stopping the cluster"
            ));
            cluster.stop();
            bail!("{name} exited ({status})");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Whether Redis answers an inline `PING` with `+PONG`.
fn redis_ping(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0_u8; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    attempt().unwrap_or(false)
}

/// The status of `GET path` on `addr`, or `None` when it does not answer in time.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).ok()?;
    status_line.split_whitespace().nth(1)?.parse().ok()
}

/// A fresh secret for this run, hex-encoded.
fn generate_secret() -> Result<String> {
    let mut bytes = [0_u8; SECRET_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A token from `lattice token` (printed alone on its last line).
fn mint(
    lattice: &std::path::Path,
    secret: &str,
    docs: &[&str],
    scope: &str,
    sub: &str,
) -> Result<String> {
    let mut command = Command::new(lattice);
    command.arg("token");
    for doc in docs {
        command.args(["--doc", doc]);
    }
    let out = command
        .args(["--scope", scope, "--ttl", TOKEN_TTL, "--sub", sub])
        .env("LATTICE_AUTH_SECRET", secret)
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("could not run {} token", lattice.display()))?;
    if !out.status.success() {
        bail!("`lattice token` failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|line| line.trim().to_owned())
        .filter(|token| !token.is_empty())
        .context("`lattice token` printed no token")
}

/// `url` with its password replaced by `***`.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or(userinfo);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}
