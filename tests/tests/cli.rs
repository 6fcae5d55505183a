//! The `lattice` command line as a new user meets it: every command's help gives examples,
//! errors are one clear line (a backtrace only when `RUST_BACKTRACE` asks for one: it is set on
//! the test machines, so each run here sets it explicitly), and `lattice serve` says it is
//! listening only once its database is open.

use std::process::Output;
use std::time::Duration;

use lattice_tests::server_support::lattice_binary;

async fn lattice(args: &[&str], backtrace: &str) -> Output {
    let run = tokio::process::Command::new(lattice_binary())
        .args(args)
        .env("RUST_BACKTRACE", backtrace)
        .env_remove("LATTICE_AUTH_SECRET")
        .env_remove("LATTICE_DATABASE_URL")
        .env_remove("LATTICE_TOKEN")
        .env_remove("LATTICE_URL")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("lattice exits by itself")
        .expect("run lattice")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn every_command_s_help_gives_examples() {
    for command in [
        &["--help"][..],
        &["serve", "--help"],
        &["token", "--help"],
        &["admin", "--help"],
    ] {
        let out = lattice(command, "0").await;
        assert!(out.status.success(), "{command:?}: {out:?}");
        let help = text(&out.stdout);
        let examples = help
            .split_once("Examples:\n")
            .unwrap_or_else(|| panic!("{command:?} has no examples:\n{help}"))
            .1;
        let lines = examples
            .lines()
            .filter(|l| l.trim_start().starts_with("lattice ") || l.contains(" lattice "))
            .count();
        assert!(
            lines >= 2,
            "{command:?} gives {lines} example commands:\n{help}"
        );
    }
}

#[tokio::test]
async fn errors_are_one_line_unless_a_backtrace_is_asked_for() {
    // A database that cannot be opened: the server never claims to listen.
    let bad_db = [
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--no-auth",
        "--database-url",
        "sqlite:///proc/no-such-dir/lattice.db",
    ];
    let out = lattice(&bad_db, "0").await;
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("listening"), "stdout: {stdout}");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
    assert!(
        stderr.starts_with(
            "error: cannot serve with database sqlite:///proc/no-such-dir/lattice.db: "
        ) && stderr.contains("unable to open database file"),
        "stderr: {stderr}"
    );

    // A short secret and a bad URL: one line each, naming the flag.
    let out = lattice(
        &["token", "--doc", "*", "--sub", "a", "--secret", "short"],
        "0",
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.starts_with("error: --secret: "), "stderr: {stderr}");
    let out = lattice(
        &["admin", "--url", "example.com", "--token", "t", "docs"],
        "0",
    )
    .await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        stderr.trim_end(),
        "error: --url must start with http:// or https://"
    );

    // With RUST_BACKTRACE=1 the whole chain comes, with a backtrace.
    let out = lattice(&bad_db, "1").await;
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("Error: "), "stderr: {stderr}");
    assert!(
        stderr.contains("Caused by:") && stderr.contains("Stack backtrace:"),
        "stderr: {stderr}"
    );
}
