//! The command line, as clap definitions: the single source of `--help`,
//! the shell completions and the man page.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit;

/// The exit status table, shown by `dflock --help` (and copied in the
/// README; a test checks that both agree).
pub const EXIT_CODES: &str = "\
Exit status:
  0        success; `run` passes the command's own status through
  1        `run -n`: the lock is busy (change with -E)
  2        usage: bad option, or an invalid key, channel, pattern or payload
           (refused before connecting, nothing is sent)
  120      `run`: the lease was lost while the command ran; the command was
           stopped (SIGTERM, then SIGKILL after --kill-after)
  121      server unreachable: connect, TLS or name resolution failed, or
           the server stopped answering or closed the connection
  122      `listen`: --timeout passed before --count signals arrived
  124      `run -w`: the lock was not obtained in time (change with -E)
  125      the server refused the request (authentication, a server
           limit, a protocol error), or another dflock failure
  126      `run`: the command was found but could not be started
  127      `run`: the command was not found
  128+N    the command (or dflock while waiting for the lock) was ended
           by signal N, as shells report it (130 = SIGINT, 143 = SIGTERM)";

const ENV_HELP: &str = "\
Environment:
  DFLOCKD_SERVERS      comma-separated servers, when no -s is given
  DFLOCKD_AUTH_TOKEN   the server's shared auth token (or --auth-token-file);
                       it never appears in output or logs";

/// `dflock`: run commands under a dflockd distributed lock, emit and wait
/// for signals, read a server's stats.
#[derive(Debug, Parser)]
#[command(
    name = "dflock",
    version,
    about = "Run commands under a dflockd distributed lock; emit and listen to signals; read stats",
    long_about = "dflock is the command-line client of the dflockd lock server: flock(1) across \
machines. `dflock run KEY -- CMD` holds a lock (or a semaphore slot) while CMD runs, renewing \
its lease in the background, and stops CMD if the lease is lost.",
    after_help = EXIT_CODES,
    after_long_help = format!("{ENV_HELP}\n\n{EXIT_CODES}"),
    propagate_version = true
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Args)]
#[command(next_help_heading = "Common options")]
pub struct Global {
    /// A server, HOST:PORT (repeatable; keys and channels are routed across
    /// the list by CRC-32, as every dflockd client does, so list the servers
    /// in the same order everywhere). Default: DFLOCKD_SERVERS, else
    /// 127.0.0.1:6388.
    #[arg(
        short = 's',
        long = "server",
        value_name = "HOST:PORT",
        env = "DFLOCKD_SERVERS",
        value_delimiter = ',',
        global = true
    )]
    pub servers: Vec<String>,

    /// Read the server's auth token from this file (trailing whitespace is
    /// stripped). DFLOCKD_AUTH_TOKEN works too; there is deliberately no
    /// flag taking the token itself, which would show in `ps`.
    #[arg(long, value_name = "PATH", global = true)]
    pub auth_token_file: Option<PathBuf>,

    /// Connect over TLS. The certificate is verified against --ca, or
    /// against Mozilla's root certificates without it.
    #[arg(long, global = true)]
    pub tls: bool,

    /// CA certificate(s) to verify the server with (PEM). Implies --tls.
    #[arg(long, value_name = "PATH", global = true)]
    pub ca: Option<PathBuf>,

    /// Skip certificate verification (anyone in the path can read and
    /// change the traffic). Implies --tls. For tests only.
    #[arg(long, global = true)]
    pub insecure_skip_verify: bool,

    /// The name the server certificates must carry. Default: the host part
    /// of each server's address.
    #[arg(long, value_name = "NAME", global = true)]
    pub server_name: Option<String>,

    /// Give up connecting to a server after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_secs, global = true)]
    pub connect_timeout: Duration,

    /// Wait at most this many seconds for a reply (beyond the time the
    /// server may block an acquire).
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_secs, global = true)]
    pub io_timeout: Duration,

    /// Trace every request and lease renewal on stderr (the auth token and
    /// lease tokens are never shown).
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No warnings or notes on stderr (errors are still reported).
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command while holding a lock (or a semaphore slot) on KEY.
    Run(RunArgs),
    /// Publish a signal: prints the number of deliveries.
    Emit(EmitArgs),
    /// Print signals matching PATTERN as they arrive.
    Listen(ListenArgs),
    /// Show the servers' locks, semaphores, waiters, listeners and
    /// connections.
    Stats(StatsArgs),
    /// Round-trip time to each server, and its protocol generation.
    Ping,
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `dflock man > dflock.1`.
    Man,
}

/// What to do when the lease is lost while the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLost {
    /// SIGTERM to the command, SIGKILL after --kill-after; exit 120.
    Kill,
    /// Only print a warning; the command keeps running unprotected.
    Warn,
}

/// `dflock run`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  dflock run nightly-report -- ./report.sh                  # at most one at a time, anywhere
  dflock run -n nightly-report -- ./report.sh               # skip this run if one is going
  dflock run --limit 2 -w 600 deploy -- sh -c 'make deploy'  # at most 2 deploys at a time")]
pub struct RunArgs {
    /// Fail at once if the lock is busy (exit 1, or -E).
    #[arg(short, long, conflicts_with = "wait")]
    pub nonblock: bool,

    /// Give up after this many seconds (exit 124, or -E). Rounded up to
    /// whole seconds (the server counts seconds). Default: wait forever.
    #[arg(short, long, value_name = "SECONDS", value_parser = parse_secs)]
    pub wait: Option<Duration>,

    /// Exit status when the lock is not obtained (-n, -w).
    #[arg(short = 'E', long, value_name = "N", value_parser = clap::value_parser!(u8))]
    pub conflict_exit_code: Option<u8>,

    /// A semaphore of this many slots instead of a lock (every client of
    /// the key must use the same limit).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,

    /// Lease TTL in seconds (default: the server's, 33 s). Renewed in the
    /// background at half of it.
    #[arg(long, value_name = "SECONDS")]
    pub lease: Option<u64>,

    /// When the lease is lost: kill the command (default) or only warn.
    #[arg(long, value_enum, default_value = "kill", value_name = "ACTION")]
    pub on_lost: OnLost,

    /// After a lost lease, SIGKILL the command this many seconds after the
    /// SIGTERM.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_secs)]
    pub kill_after: Duration,

    /// Keep the command in dflock's process group (for interactive
    /// commands that read the terminal). By default the command runs in a
    /// process group of its own, and signals go to that whole group, so a
    /// lost lease also stops what `sh -c` started.
    #[arg(long)]
    pub foreground: bool,

    /// The lock key.
    pub key: String,

    /// The command and its arguments, run directly (no shell; write
    /// `sh -c '…'` for one). It gets DFLOCKD_KEY, DFLOCKD_TOKEN and, when
    /// the server issues fencing tokens, DFLOCKD_FENCE.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

/// `dflock emit`.
#[derive(Debug, Args)]
pub struct EmitArgs {
    /// The literal channel (dot-separated, no wildcards).
    pub channel: String,
    /// The payload (one line), or `-` to read it from stdin (one trailing
    /// newline is dropped).
    pub payload: String,
}

/// `dflock listen`.
#[derive(Debug, Args)]
pub struct ListenArgs {
    /// The pattern: `*` matches one dot-separated token, `>` one or more
    /// trailing tokens.
    pub pattern: String,

    /// Listen as a member of this queue group (each signal goes to one
    /// member).
    #[arg(long, value_name = "G")]
    pub group: Option<String>,

    /// Exit 0 after this many signals.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Exit 122 after this many seconds (unless --count signals came
    /// first).
    #[arg(long, value_name = "SECONDS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,

    /// One JSON object per line: {"channel": …, "payload": …}.
    #[arg(long)]
    pub json: bool,

    /// Exit 121 when a connection is lost, instead of reconnecting (and
    /// subscribing again) with backoff. Signals sent while disconnected are
    /// never received.
    #[arg(long)]
    pub no_reconnect: bool,
}

/// `dflock stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The server's JSON as is (one line per server; with several servers
    /// each line is {"server": …, "stats": …}).
    #[arg(long)]
    pub json: bool,
}

/// Seconds as a decimal number (`2`, `0.5`), within the server's range.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}`: seconds must be 0 or more"));
    }
    let max = dflockd_client::protocol::validate::MAX_SECONDS;
    if secs > max as f64 {
        return Err(format!("`{s}`: at most {max} seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("`{s}`: {e}"))
}

impl RunArgs {
    /// The exit status when the lock was not obtained.
    pub fn conflict_code(&self) -> i32 {
        match (self.conflict_exit_code, self.nonblock) {
            (Some(code), _) => i32::from(code),
            (None, true) => exit::BUSY,
            (None, false) => exit::WAIT_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_readme_table_has_the_same_codes() {
        let readme = include_str!("../../README.md");
        for line in EXIT_CODES.lines().skip(1) {
            let code = line.split_whitespace().next().unwrap_or_default();
            if code.starts_with(|c: char| c.is_ascii_digit()) {
                assert!(
                    readme.contains(&format!("| {code} |")),
                    "exit code {code} missing from the README table"
                );
            }
        }
    }

    #[test]
    fn seconds_parse_and_reject() {
        assert_eq!(parse_secs("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("nan").is_err());
        assert!(parse_secs("1e20").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn the_help_lists_every_exit_code() {
        let help = Cli::command().render_long_help().to_string();
        for code in [
            exit::OK,
            exit::BUSY,
            exit::USAGE,
            exit::LEASE_LOST,
            exit::UNREACHABLE,
            exit::LISTEN_TIMEOUT,
            exit::WAIT_TIMEOUT,
            exit::FAILURE,
            exit::NOT_EXECUTABLE,
            exit::NOT_FOUND,
        ] {
            assert!(
                help.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{code} "))),
                "exit code {code} missing from --help"
            );
        }
    }
}
