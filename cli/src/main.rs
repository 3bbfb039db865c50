//! `dflock`: the dflockd command-line client. See `dflock --help` and the
//! README's "Command line" section.

mod cli;
mod client;
mod exit;
mod info;
mod logger;
mod output;
mod run;
mod signals;

use clap::{CommandFactory as _, Parser as _};

use cli::{Cli, Command};
use client::Target;
use exit::Failure;
use output::Out;

fn main() {
    let cli = Cli::parse();
    logger::init(cli.global.verbose, cli.global.quiet);
    let code = match dispatch(&cli) {
        Ok(code) => code,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("dflock: {}", f.message);
            }
            f.code
        }
    };
    std::process::exit(code);
}

fn dispatch(cli: &Cli) -> Result<i32, Failure> {
    let mut out = Out::new();
    match &cli.command {
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "dflock", &mut buf);
            write_raw(&buf)
        }
        Command::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut buf)
                .map_err(|e| Failure::new(exit::FAILURE, format!("man page: {e}")))?;
            write_raw(&buf)
        }
        Command::Run(a) => run::run(&Target::from_args(&cli.global)?, a),
        Command::Emit(a) => signals::run_emit(&Target::from_args(&cli.global)?, a, &mut out),
        Command::Listen(a) => signals::run_listen(&Target::from_args(&cli.global)?, a, &mut out),
        Command::Stats(a) => info::run_stats(&Target::from_args(&cli.global)?, a, &mut out),
        Command::Ping => info::run_ping(&Target::from_args(&cli.global)?, &mut out),
    }
}

fn write_raw(bytes: &[u8]) -> Result<i32, Failure> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map(|()| exit::OK)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::new(output::BROKEN_PIPE, ""),
            _ => Failure::new(exit::FAILURE, format!("writing stdout: {e}")),
        })
}
