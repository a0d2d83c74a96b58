//! `prodgy-api`: parses flags and runs the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    prodgy_api::run(prodgy_api::Args::parse()).await?;
    Ok(())
}
