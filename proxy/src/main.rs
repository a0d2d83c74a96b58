//! `prodgy-proxy`: see the library for everything.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    prodgy_proxy::run(prodgy_proxy::Args::parse())?;
    Ok(())
}
