//! `kubectl-apitoken`: parse the arguments, wire the real terminal, run.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use kubectl_apitoken::{Cli, Terminal};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut input = stdin.lock();
    let stdout_is_tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut term = Terminal {
        out: &mut out,
        err: &mut err,
        input: if interactive { Some(&mut input) } else { None },
        stdout_is_tty,
    };
    match cli.run(&mut term).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = term.out.flush();
            let _ = writeln!(term.err, "error: {e}");
            ExitCode::FAILURE
        }
    }
}
