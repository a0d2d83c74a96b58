//! Command-line interface (clap derive). `main` parses [`Cli`] and calls
//! [`Cli::run`]; the help texts here are what `docs/cli.md` quotes.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use prodgy_crds::Scope;

use crate::parse::{
    parse_duration_flag, parse_scope, parse_source_range, validate_name, validate_product,
};
use crate::render::Format;

/// Manage Prodgy API tokens (ApiToken resources) from the terminal.
///
/// Each command is one action of the product guide: create, list, get (the
/// token card), copy the prefix, regenerate, deactivate, activate, revoke.
/// The operator issues tokens; this plugin only edits ApiToken resources and
/// shows a new token once, from its delivery Secret.
#[derive(Debug, Parser)]
#[command(name = "kubectl-apitoken", bin_name = "kubectl apitoken", version)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten, next_help_heading = "Global options")]
    pub global: GlobalArgs,
    /// The action.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Connects as the global options say and runs the command.
    pub async fn run(&self, term: &mut crate::Terminal<'_>) -> crate::Result<()> {
        let session = crate::connect::session(&self.global).await?;
        session.run(&self.command, term).await
    }
}

/// Options shared by every command (accepted before or after it).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Namespace of the tokens [default: the kubeconfig context's namespace]
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Kubeconfig context to use [default: the current context]
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Kubeconfig file(s), ':'-separated like KUBECONFIG [default: ~/.kube/config]
    #[arg(long, global = true, env = "KUBECONFIG", hide_env_values = true)]
    pub kubeconfig: Option<String>,
    /// How long to wait for the API server and for the operator (e.g. 30s, 2m)
    #[arg(long, global = true, env = "KUBECTL_APITOKEN_TIMEOUT", hide_env_values = true,
          default_value = "30s", value_parser = timeout_flag)]
    pub timeout: Duration,
}

/// The product guide's actions.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a token and show it once
    Create(CreateArgs),
    /// List tokens: name, product, prefix, created at, expiration, usage, status, last used
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show one token's card
    Get(GetArgs),
    /// Copy a token's prefix to the clipboard (OSC 52) and print it
    Copy(CopyArgs),
    /// Issue a new token and show it once; the previous one stops working
    Regenerate(RegenerateArgs),
    /// Deactivate a token: it stops accepting API calls until activated
    Deactivate(NameArgs),
    /// Activate a deactivated token
    Activate(NameArgs),
    /// Revoke a token permanently
    Revoke(RevokeArgs),
    /// Serve the API Tokens page on 127.0.0.1 and open it in the browser
    Ui(UiArgs),
}

/// `create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Token name (a Kubernetes object name: lower-case letters, digits, '-', '.')
    #[arg(value_parser = name_arg)]
    pub name: String,
    /// Product (workspace) the token grants access to
    #[arg(long, value_parser = product_arg)]
    pub product: String,
    /// Expiration: an RFC 3339 time (2027-01-01T00:00:00Z) or a duration from now (30d, 12h) [default: never]
    #[arg(long)]
    pub expires: Option<String>,
    /// Limit the token to a scope (repeatable) [default: every resource of the product]
    #[arg(long = "scope", value_name = "SCOPE", value_parser = scope_arg)]
    pub scopes: Vec<Scope>,
    /// What the token is for (shown as Description)
    #[arg(long)]
    pub description: Option<String>,
    /// Requests per second allowed with this token, per proxy replica
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate_limit: Option<u32>,
    /// Burst size for --rate-limit [default: the rate]
    #[arg(long, value_name = "N", requires = "rate_limit",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub burst: Option<u32>,
    /// Remove the delivery Secret after the operator's reveal window
    #[arg(long)]
    pub reveal_once: bool,
    /// Accept the token only from this source range, a CIDR such as 10.0.0.0/8 or 2001:db8::/32 (repeatable) [default: any source]
    #[arg(long = "allow-source", value_name = "CIDR", value_parser = parse_source_range)]
    pub allow_sources: Vec<String>,
    /// Cap on the calls, over every proxy replica: N for the token's whole life, or N/PER per window (1000/30d)
    #[arg(long, value_name = "N[/PER]", value_parser = crate::usage_limit::parse)]
    pub usage_limit: Option<prodgy_crds::UsageLimit>,
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// List tokens of every namespace
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Token name
    pub name: String,
    /// Output format (table = the token card)
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Token name
    pub name: String,
    /// Send the clipboard escape sequence even when stdout is not a terminal
    #[arg(long)]
    pub osc52: bool,
}

/// `regenerate`.
#[derive(Debug, Args)]
pub struct RegenerateArgs {
    /// Token name
    pub name: String,
    /// Keep the previous token working this long (e.g. 1h) [default: the manifest's, else none]
    #[arg(long, value_parser = grace_flag)]
    pub grace: Option<Duration>,
}

/// Commands that take only a token name.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// Token name
    pub name: String,
}

/// `revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Token name
    pub name: String,
    /// Do not ask for confirmation (required when stdin is not a terminal)
    #[arg(short = 'y', long)]
    pub yes: bool,
}

/// `ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// Show the tokens of every namespace
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Port on 127.0.0.1 to serve on [default: any free port]
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub port: u16,
    /// Print the URL but do not open a browser
    #[arg(long)]
    pub no_open: bool,
}

fn name_arg(s: &str) -> Result<String, String> {
    validate_name(s).map(|()| s.to_owned())
}

fn product_arg(s: &str) -> Result<String, String> {
    validate_product(s).map(|()| s.to_owned())
}

fn scope_arg(s: &str) -> Result<Scope, String> {
    parse_scope(s)
}

fn timeout_flag(s: &str) -> Result<Duration, String> {
    match parse_duration_flag("--timeout", s) {
        Ok(d) if d.is_zero() => Err("must be longer than 0s".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn grace_flag(s: &str) -> Result<Duration, String> {
    parse_duration_flag("--grace", s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubectl-apitoken").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_takes_every_documented_flag() {
        let line = "create ci --product acme --expires 30d --scope agents:read \
                    --scope storage:write --description CI --rate-limit 5 --reveal-once \
                    -n team-a --timeout 2m";
        let cli = parse(&line.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("team-a"));
        assert_eq!(cli.global.timeout, Duration::from_secs(120));
        let Command::Create(c) = cli.command else {
            panic!("not create")
        };
        assert_eq!(c.scopes, [Scope::AgentsRead, Scope::StorageWrite]);
        assert_eq!(c.rate_limit, Some(5));
        assert!(c.reveal_once);
    }

    #[test]
    fn bad_values_are_refused_before_any_api_call() {
        for bad in [
            &["create", "CI", "--product", "acme"][..],
            &["create", "ci", "--product", "Acme!"],
            &["create", "ci"],
            &["create", "ci", "--product", "acme", "--scope", "root"],
            &["create", "ci", "--product", "acme", "--rate-limit", "0"],
            &["create", "ci", "--product", "acme", "--burst", "5"],
            &["regenerate", "ci", "--grace", "soon"],
            &["list", "-o", "xml"],
            &["list", "--timeout", "0s"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn globals_work_after_the_command_and_defaults_apply() {
        let cli = parse(&["list", "-A", "-o", "json", "--context", "kind"]).unwrap();
        assert_eq!(cli.global.context.as_deref(), Some("kind"));
        assert_eq!(cli.global.timeout, crate::DEFAULT_TIMEOUT);
        assert!(matches!(
            cli.command,
            Command::List(ListArgs {
                all_namespaces: true,
                output: Format::Json
            })
        ));
        let ui = parse(&["ui", "-A", "--port", "8001", "--no-open"]).unwrap();
        assert!(matches!(
            ui.command,
            Command::Ui(UiArgs {
                all_namespaces: true,
                port: 8001,
                no_open: true
            })
        ));
        let revoke = parse(&["revoke", "ci", "-y"]).unwrap();
        assert!(matches!(
            revoke.command,
            Command::Revoke(RevokeArgs { yes: true, .. })
        ));
    }

    #[test]
    fn allow_source_is_repeatable_and_checked_by_the_contract() {
        let line =
            "create ci --product acme --allow-source 10.0.0.0/8 --allow-source 2001:db8::/32";
        let cli = parse(&line.split_whitespace().collect::<Vec<_>>()).unwrap();
        let Command::Create(c) = cli.command else {
            panic!("not create")
        };
        assert_eq!(c.allow_sources, ["10.0.0.0/8", "2001:db8::/32"]);
        for bad in ["10.0.0.1", "10.1.2.3/8", "2001:DB8::/32", "nowhere"] {
            let e =
                parse(&["create", "ci", "--product", "acme", "--allow-source", bad]).unwrap_err();
            assert!(e.to_string().contains("invalid source range"), "{bad}: {e}");
        }
    }
}
