//! The product API served behind the token proxy.
//!
//! Agents, executions, triggers, webhooks, integrations, knowledge base,
//! storage and assistant chat, each scoped to the product the proxy
//! verified (see [`identity`]). [`app`] is the data router; [`Server`] wires
//! it to listeners, the execution workers and the scheduler. Data lives in
//! SQLite (default) or PostgreSQL ([`db`]); file bytes on local disk or in an
//! S3-compatible bucket ([`blobs`]).

pub mod agents;
pub mod answer;
pub mod blobs;
pub mod chat;
pub mod config;
pub mod crypto;
pub mod db;
pub mod egress;
pub mod error;
pub mod extract;
pub mod identity;
pub mod ids;
pub mod integrations;
pub mod kinds;
pub mod knowledge;
pub mod metrics;
pub mod ops;
pub mod queue;
pub mod router;
pub mod server;
pub mod state;
pub mod storage;
pub mod template;
pub mod triggers;
pub mod unread;
pub mod validate;
pub mod webhooks;

pub use config::{Args, Command, Config};
pub use error::{Error, Result};
pub use router::{app, openapi_document};
pub use server::{Server, build_state};
pub use state::AppState;

/// Runs the command the arguments ask for.
pub async fn run(args: Args) -> Result<()> {
    server::init_tracing(args.log_format);
    let config = args.config()?;
    match args.command.unwrap_or(Command::Serve) {
        Command::Serve => server::serve(config).await,
        Command::Reencrypt => server::reencrypt(config).await.map(|_| ()),
    }
}
