//! kubectl plugin: the product guide's token actions from the terminal.
//!
//! `kubectl apitoken create|list|get|copy|regenerate|deactivate|activate|revoke`
//! work on `ApiToken` resources only; the operator does the rest; `ui`
//! serves the same actions as a page ([`ui`]). Pure parts
//! (argument parsing, expiry arithmetic, table and card rendering, OSC 52,
//! the "has the operator issued it yet?" decision) live in their own modules
//! and are unit-tested; [`commands`] is the thin kube shell around them and
//! writes to a [`Terminal`] so tests can capture what a user would see.

pub mod args;
pub mod commands;
pub mod connect;
pub mod issue;
pub mod notices;
pub mod osc52;
pub mod parse;
pub mod render;
pub mod terminal;
pub mod ui;
pub mod usage_limit;

use std::time::Duration;

pub use args::{Cli, Command};
pub use commands::Session;
pub use terminal::Terminal;

/// Everything that can go wrong, one line each. No message ever contains a
/// plaintext token: the only place a token is written is the one-time
/// display on stdout.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig cannot be loaded or names an unknown context.
    #[error("cannot load the Kubernetes configuration: {0}")]
    Kubeconfig(String),
    /// The API server did not answer at all.
    #[error("cannot reach the Kubernetes API at {server}: {cause}")]
    NoCluster {
        /// The API server URL from the kubeconfig.
        server: String,
        /// The innermost transport error.
        cause: String,
    },
    /// The API server answered 401.
    #[error(
        "the Kubernetes API at {server} rejected your credentials (401): check your kubeconfig user"
    )]
    Unauthorized {
        /// The API server URL.
        server: String,
    },
    /// The `apitokens.prodgy.io` resource does not exist on the server.
    #[error("the ApiToken CRD is not installed: kubectl apply -f crds/apitoken.yaml")]
    CrdNotInstalled,
    /// The named token does not exist.
    #[error("apitoken {name:?} not found in namespace {namespace:?}")]
    NotFound {
        /// Namespace looked in.
        namespace: String,
        /// Token name.
        name: String,
    },
    /// RBAC said no.
    #[error(
        "forbidden: you are not allowed to {verb} {resource} in {scope} (ask for RBAC permission to {verb} {resource})"
    )]
    Forbidden {
        /// The Kubernetes verb (`get`, `list`, `patch`, …).
        verb: &'static str,
        /// The resource (`apitokens.prodgy.io`, `secrets`).
        resource: &'static str,
        /// `namespace "x"` or `all namespaces`.
        scope: String,
    },
    /// `create` of a name that is taken.
    #[error(
        "apitoken {name:?} already exists in namespace {namespace:?}: use `kubectl apitoken regenerate {name}` for a new token"
    )]
    AlreadyExists {
        /// Namespace.
        namespace: String,
        /// Token name.
        name: String,
    },
    /// Someone else changed the token between our read and our write.
    #[error(
        "apitoken {name:?} changed while this command was updating it; nothing was changed, run the command again"
    )]
    Conflict {
        /// Token name.
        name: String,
    },
    /// The API server refused the object (schema or CEL validation).
    #[error("the API server rejected the change: {0}")]
    Invalid(String),
    /// `--expires` is neither RFC 3339 nor a duration, or is not in the future.
    #[error("invalid expiry {input:?}: {reason}")]
    InvalidExpiry {
        /// What the user typed.
        input: String,
        /// Why it was refused.
        reason: String,
    },
    /// A flag value is malformed.
    #[error("invalid {flag}: {reason}")]
    InvalidArgument {
        /// The flag, e.g. `--grace`.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// The operator did not act in time.
    #[error(
        "timed out after {after} waiting for the operator to {what}{detail}: is prodgy-operator running and watching namespace {namespace:?}?"
    )]
    Timeout {
        /// What we waited for.
        what: String,
        /// The `--timeout` value.
        after: String,
        /// The token's namespace.
        namespace: String,
        /// ` (last status: …)` or empty.
        detail: String,
    },
    /// The operator refused the spec (Ready=False, InvalidSpec).
    #[error("the operator cannot issue apitoken {name:?}: {message}")]
    OperatorRejected {
        /// Token name.
        name: String,
        /// The Ready condition's message.
        message: String,
    },
    /// The token was issued but its plaintext can no longer be read.
    #[error("apitoken {name:?} was issued but {reason}")]
    Undeliverable {
        /// Token name.
        name: String,
        /// What is wrong with the delivery Secret (never its content).
        reason: String,
    },
    /// The action makes no sense for this token's state.
    #[error("{0}")]
    Refused(String),
    /// The user answered "no" at the confirmation prompt.
    #[error("aborted: nothing was changed")]
    Aborted,
    /// Any other API error, with the server's own (token-free) message.
    #[error("the Kubernetes API failed to {verb} {resource} (HTTP {code}): {message}")]
    Api {
        /// Verb attempted.
        verb: &'static str,
        /// Resource.
        resource: &'static str,
        /// HTTP status.
        code: u16,
        /// Server message, flattened to one line.
        message: String,
    },
    /// Writing to the terminal failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    /// The console cannot listen or serve.
    #[error("cannot serve the console: {0}")]
    Serve(String),
    /// Serialising JSON/YAML output failed.
    #[error("cannot render output: {0}")]
    Render(String),
}

/// Result alias of the CLI library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Default for `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The field manager every write of this plugin uses.
pub const FIELD_MANAGER: &str = "kubectl-apitoken";
