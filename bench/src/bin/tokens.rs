//! Writes the benchmark's token files: `records.json` (an array of N hashed
//! records, the proxy's file-source format), `one.json` (the first record
//! alone), `tokens.txt` (the plaintext of the first M tokens, one per line,
//! for the load generator) and `nginx-map.conf` (the same M tokens as an
//! nginx `map` body). Plaintext stays in the output directory, which the
//! benchmark deletes afterwards.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use clap::Parser;
use prodgy_crds::{HashedRecord, Token};

/// Benchmark token generator.
#[derive(Debug, Parser)]
struct Args {
    /// Records to write.
    #[arg(long, default_value_t = 1_000_000)]
    count: usize,
    /// How many of them the load generator uses.
    #[arg(long, default_value_t = 10_000)]
    spread: usize,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

fn record(i: usize, t: &Token) -> HashedRecord {
    HashedRecord::active(
        &format!("team-{}", i % 100),
        &format!("token-{i}"),
        &format!("{i:08x}-0000-4000-8000-{i:012x}"),
        "acme",
        &t.hash(),
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let mut records = BufWriter::new(File::create(args.out.join("records.json"))?);
    let mut tokens = BufWriter::new(File::create(args.out.join("tokens.txt"))?);
    let mut map = BufWriter::new(File::create(args.out.join("nginx-map.conf"))?);
    records.write_all(b"[\n")?;
    for i in 0..args.count {
        let t = Token::generate("prod")?;
        let r = record(i, &t);
        if i > 0 {
            records.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut records, &r)?;
        if i == 0 {
            std::fs::write(args.out.join("one.json"), serde_json::to_vec(&[&r])?)?;
        }
        if i < args.spread {
            writeln!(tokens, "{}", t.expose())?;
            writeln!(map, "\"Bearer {}\" 1;", t.expose())?;
        }
    }
    records.write_all(b"\n]\n")?;
    records.flush()?;
    tokens.flush()?;
    map.flush()?;
    Ok(())
}
