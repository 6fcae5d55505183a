//! `lattice token`: mints an access token with the given secrets.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use lattice_server::auth::{KeySet, Scope, parse_ttl};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    export LATTICE_AUTH_SECRET=…                    # the server's secret (kid:secret,… or bare)\n  \
    lattice token --sub ada --doc 'notes/*' --scope write --ttl 8h\n  \
    lattice token --sub ops --doc '*' --scope admin --ttl 15m\n  \
    TOKEN=$(lattice token --sub bot --doc reports/daily 2>/dev/null)   # the token alone")]
pub(crate) struct TokenArgs {
    /// Signing secrets, as for `lattice serve --auth-secret` (`kid:secret,…` or a bare secret).
    /// Prefer the environment variable: command lines are visible to other local users.
    #[arg(
        long,
        env = "LATTICE_AUTH_SECRET",
        value_delimiter = ',',
        hide_env_values = true,
        required = true
    )]
    secret: Vec<String>,
    /// Key id to sign with (default: the first secret's).
    #[arg(long)]
    kid: Option<String>,
    /// Document pattern: an exact id, `prefix/*`, or `*` for every document. Repeatable.
    #[arg(long = "doc", required = true)]
    docs: Vec<String>,
    /// `read`, `write` or `admin`; a higher scope includes the lower ones.
    #[arg(long, default_value = "read", value_parser = |s: &str| s.parse::<Scope>())]
    scope: Scope,
    /// Lifetime: `30s`, `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = |s: &str| parse_ttl(s))]
    ttl: Duration,
    /// Subject: the user id, recorded as the author of every change made with the token.
    #[arg(long)]
    sub: String,
}

pub(crate) fn mint(args: &TokenArgs) -> Result<()> {
    let keys = KeySet::parse(&args.secret).context("--secret")?;
    let kid = args
        .kid
        .as_deref()
        .unwrap_or(keys.signing_kid())
        .to_string();
    let token = keys.mint(&args.sub, &args.docs, args.scope, args.ttl, Some(&kid))?;
    eprintln!("subject:   {}", args.sub);
    eprintln!("documents: {}", args.docs.join(" "));
    eprintln!("scope:     {}", args.scope);
    eprintln!("key id:    {kid}");
    eprintln!("expires:   in {}s", args.ttl.as_secs());
    println!("{token}");
    Ok(())
}
