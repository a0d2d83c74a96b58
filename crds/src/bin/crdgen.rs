//! Prints the CRDs generated from the Rust types.
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::io::stdout().write_all(prodgy_crds::crd_yaml()?.as_bytes())?;
    Ok(())
}
