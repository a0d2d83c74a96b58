//! `prodgy-proxy`: see the library for everything.

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    prodgy_proxy::run(prodgy_proxy::Args::parse())?;
    Ok(())
}
