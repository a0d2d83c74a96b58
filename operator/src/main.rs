//! `prodgy-operator`: see the library for everything.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = prodgy_operator::config::Cli::parse();
    prodgy_operator::app::run_cli(cli).await?;
    Ok(())
}
