//! The commands: thin kube calls around the pure modules.
//!
//! Every write uses the field manager [`FIELD_MANAGER`]: `create` is a
//! server-side apply of the fields the user chose; the other writes are JSON
//! merge patches of one field (a partial server-side apply would drop the
//! fields `create` applied). Setting `active`/`revoked` is idempotent and
//! needs no guard; `regenerate` computes n+1 from what it read, so its patch
//! carries the read `resourceVersion`.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use prodgy_crds::{ApiToken, DeliveryMode, Phase, Token};
use serde_json::{Value, json};

use crate::args::{CopyArgs, CreateArgs, GetArgs, ListArgs, NameArgs, RegenerateArgs, RevokeArgs};
use crate::issue::{Delivery, IssueState, check_delivery, issue_state};
use crate::parse::{format_duration, parse_expiry};
use crate::render::{Format, TokenList, TokenView, render_card, render_document, render_table};
use crate::{Command, Error, FIELD_MANAGER, Result, Terminal, osc52};

const TOKENS: &str = "apitokens.prodgy.io";
const SECRETS: &str = "secrets";

/// A regeneration asked for: the target number and the prefix it replaces.
#[derive(Debug)]
pub struct Regeneration {
    /// The `spec.regeneration` to wait for.
    pub target: i64,
    /// The prefix of the token being replaced, if it was issued.
    pub old_prefix: Option<String>,
}

/// A connected client, the namespace commands act in, and the wait budget.
#[derive(Clone)]
pub struct Session {
    client: Client,
    namespace: String,
    timeout: Duration,
    poll: Duration,
    server: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("namespace", &self.namespace)
            .field("server", &self.server)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A freshly issued token, read from its delivery Secret. Its `Debug`
/// never shows the plaintext.
#[derive(Debug)]
pub struct Issued {
    /// The plaintext, to be shown once.
    pub token: Token,
    /// The delivery Secret it was read from.
    pub secret: String,
    /// The ApiToken as it was when the token was read.
    pub resource: ApiToken,
}

impl Issued {
    /// Whether the delivery Secret is removed after the reveal window.
    pub fn reveal_once(&self) -> bool {
        delivery_mode(&self.resource) == Some(DeliveryMode::RevealOnce)
    }
}

impl Session {
    /// A session acting in `namespace`, waiting at most `timeout` for the operator.
    pub fn new(client: Client, namespace: impl Into<String>, timeout: Duration) -> Self {
        Self {
            client,
            namespace: namespace.into(),
            timeout,
            poll: Duration::from_millis(200),
            server: "the configured cluster".into(),
        }
    }

    /// Names the API server in "cannot reach" errors.
    #[must_use]
    pub fn with_server(mut self, server: impl Into<String>) -> Self {
        self.server = server.into();
        self
    }

    /// The namespace commands act in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The same connection acting in another namespace.
    #[must_use]
    pub fn in_namespace(&self, namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            ..self.clone()
        }
    }

    /// How long requests and waits for the operator may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The Kubernetes client (the user's own credentials).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs one command.
    pub async fn run(&self, command: &Command, term: &mut Terminal<'_>) -> Result<()> {
        match command {
            Command::Create(a) => self.create(a, term).await,
            Command::List(a) => self.list(a, term).await,
            Command::Get(a) => self.get(a, term).await,
            Command::Copy(a) => self.copy(a, term).await,
            Command::Regenerate(a) => self.regenerate(a, term).await,
            Command::Deactivate(a) => self.deactivate(a, term).await,
            Command::Activate(a) => self.activate(a, term).await,
            Command::Revoke(a) => self.revoke(a, term).await,
            Command::Ui(a) => crate::ui::serve(self, a, term).await,
        }
    }

    /// `create`: apply the ApiToken, wait for the operator, show the token once.
    pub async fn create(&self, args: &CreateArgs, term: &mut Terminal<'_>) -> Result<()> {
        self.apply_new(args).await?;
        writeln!(
            term.err,
            "apitoken {:?} created in namespace {:?}; waiting for the operator to issue it...",
            args.name, self.namespace
        )?;
        let issued = self.wait_for_issue(&args.name, 0).await?;
        show_token(term, &issued)?;
        let reveal_once = args.reveal_once || issued.reveal_once();
        self.warn_once(term, &issued, reveal_once)
    }

    /// The write half of `create`: refuses a taken name, then applies the
    /// chosen fields. [`Session::wait_for_issue`] with regeneration 0 then
    /// reads the token.
    pub async fn apply_new(&self, args: &CreateArgs) -> Result<()> {
        let expires_at = args
            .expires
            .as_deref()
            .map(|e| parse_expiry(e, Utc::now()))
            .transpose()?;
        let api = self.tokens();
        match api.get(&args.name).await {
            Ok(_) => {
                return Err(Error::AlreadyExists {
                    namespace: self.namespace.clone(),
                    name: args.name.clone(),
                });
            }
            Err(e) if is_not_found(&e) => self.require_crd().await?,
            Err(e) => return Err(self.api_error(e, "get", TOKENS)),
        }
        let manifest = create_manifest(&self.namespace, args, expires_at);
        api.patch(
            &args.name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&manifest),
        )
        .await
        .map_err(|e| self.api_error(e, "patch", TOKENS))?;
        Ok(())
    }

    /// `list`.
    pub async fn list(&self, args: &ListArgs, term: &mut Terminal<'_>) -> Result<()> {
        let items = self.views(args.all_namespaces).await?;
        match args.output {
            Format::Table if items.is_empty() => {
                if args.all_namespaces {
                    writeln!(term.err, "No API tokens found.")?;
                } else {
                    writeln!(
                        term.err,
                        "No API tokens found in namespace {:?}.",
                        self.namespace
                    )?;
                }
            }
            Format::Table => term
                .out
                .write_all(render_table(&items, args.all_namespaces).as_bytes())?,
            format => term
                .out
                .write_all(render_document(&TokenList { items }, format)?.as_bytes())?,
        }
        Ok(())
    }

    /// The tokens of the namespace (or all), sorted by namespace then name.
    pub async fn views(&self, all_namespaces: bool) -> Result<Vec<TokenView>> {
        let api: Api<ApiToken> = if all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.tokens()
        };
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| self.list_error(e, "list", all_namespaces))?;
        let mut items: Vec<TokenView> = list.items.iter().map(TokenView::from_token).collect();
        items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(items)
    }

    /// A failed list or watch of ApiTokens as the user should read it.
    pub fn list_error(&self, e: kube::Error, verb: &'static str, all_namespaces: bool) -> Error {
        if is_not_found(&e) {
            Error::CrdNotInstalled
        } else {
            self.api_error_in(e, verb, TOKENS, all_namespaces)
        }
    }

    /// `get`: the token card.
    pub async fn get(&self, args: &GetArgs, term: &mut Terminal<'_>) -> Result<()> {
        let view = TokenView::from_token(&self.get_token(&args.name).await?);
        let text = match args.output {
            Format::Table => render_card(&view),
            format => render_document(&view, format)?,
        };
        term.out.write_all(text.as_bytes())?;
        Ok(())
    }

    /// `copy`: the prefix to the clipboard (OSC 52) and to stdout.
    pub async fn copy(&self, args: &CopyArgs, term: &mut Terminal<'_>) -> Result<()> {
        let token = self.get_token(&args.name).await?;
        let Some(prefix) = token.status.as_ref().and_then(|s| s.prefix.clone()) else {
            return Err(Error::Refused(format!(
                "apitoken {:?} has no prefix yet: the operator has not issued it",
                args.name
            )));
        };
        if args.osc52 || term.stdout_is_tty {
            term.out.write_all(osc52::encode(&prefix).as_bytes())?;
            writeln!(term.out, "{prefix}")?;
            writeln!(term.err, "Copied the prefix to the clipboard.")?;
        } else {
            writeln!(term.out, "{prefix}")?;
        }
        Ok(())
    }

    /// `regenerate`: bump `spec.regeneration`, wait, show the new token once.
    pub async fn regenerate(&self, args: &RegenerateArgs, term: &mut Terminal<'_>) -> Result<()> {
        let requested = self.request_regeneration(&args.name, args.grace).await?;
        writeln!(
            term.err,
            "apitoken {:?}: regeneration {} requested; waiting for the operator to issue the new token...",
            args.name, requested.target
        )?;
        let issued = self.wait_for_issue(&args.name, requested.target).await?;
        show_token(term, &issued)?;
        let old = requested.old_prefix.as_deref().unwrap_or("-");
        match previous_valid_until(&issued) {
            Some(until) => writeln!(
                term.err,
                "The previous token ({old}...) keeps working until {}.",
                rfc3339(until)
            )?,
            None => writeln!(term.err, "The previous token ({old}...) no longer works.")?,
        }
        self.warn_once(term, &issued, issued.reveal_once())
    }

    /// The write half of `regenerate`: refuses revoked and expired tokens,
    /// then asks for regeneration n+1. [`Session::wait_for_issue`] with the
    /// returned target then reads the new token.
    pub async fn request_regeneration(
        &self,
        name: &str,
        grace: Option<Duration>,
    ) -> Result<Regeneration> {
        let token = self.get_token(name).await?;
        match ended(&token, Utc::now()) {
            Some(Ended::Revoked) => {
                return Err(Error::Refused(format!(
                    "apitoken {name:?} is revoked: revocation is permanent and a revoked token is never re-issued; create a new token"
                )));
            }
            Some(Ended::Expired(when)) => {
                return Err(Error::Refused(format!(
                    "apitoken {name:?} {when}: a regenerated token would be expired too; create a new token"
                )));
            }
            None => {}
        }
        let target = self.bump_regeneration(name, &token, grace).await?;
        Ok(Regeneration {
            target,
            old_prefix: token.status.and_then(|s| s.prefix),
        })
    }

    /// `deactivate`.
    pub async fn deactivate(&self, args: &NameArgs, term: &mut Terminal<'_>) -> Result<()> {
        self.toggle(&args.name, false, term).await
    }

    /// `activate`: refuses revoked and expired tokens, which it cannot revive.
    pub async fn activate(&self, args: &NameArgs, term: &mut Terminal<'_>) -> Result<()> {
        self.toggle(&args.name, true, term).await
    }

    async fn toggle(&self, name: &str, active: bool, term: &mut Terminal<'_>) -> Result<()> {
        let changed = self.set_active(name, active).await?;
        let text = match (active, changed) {
            (true, false) => "is already active.",
            (false, false) => "is already inactive.",
            (true, true) => "activated: API calls with it are accepted again.",
            (false, true) => {
                "deactivated: API calls with it are rejected until you activate it again."
            }
        };
        writeln!(term.out, "apitoken {name:?} {text}")?;
        Ok(())
    }

    /// Sets `spec.active`; `Ok(false)` when it already was. Refuses what a
    /// toggle cannot change (revoked, or activating an expired token).
    pub async fn set_active(&self, name: &str, active: bool) -> Result<bool> {
        let token = self.get_token(name).await?;
        if let Some(why) = toggle_refusal(&token, active, Utc::now()) {
            return Err(Error::Refused(format!("apitoken {name:?} {why}")));
        }
        if token.spec.active == active {
            return Ok(false);
        }
        // Setting a boolean is idempotent: no resourceVersion guard needed.
        self.patch_spec(name, json!({ "active": active }), None)
            .await?;
        Ok(true)
    }

    /// `revoke`: permanent, so it asks first (or needs `--yes`).
    pub async fn revoke(&self, args: &RevokeArgs, term: &mut Terminal<'_>) -> Result<()> {
        let token = self.revocable(&args.name).await?;
        if !args.yes {
            let prefix = token
                .status
                .as_ref()
                .and_then(|s| s.prefix.as_deref())
                .unwrap_or("not issued");
            let question = format!(
                "Revoke apitoken {:?} ({prefix}) in namespace {:?}? It stops working for good and cannot be re-activated.",
                args.name, self.namespace
            );
            match term.confirm(&question)? {
                None => {
                    return Err(Error::Refused(format!(
                        "refusing to revoke apitoken {:?} without confirmation: stdin is not a terminal; pass --yes",
                        args.name
                    )));
                }
                Some(false) => return Err(Error::Aborted),
                Some(true) => {}
            }
        }
        self.mark_revoked(&args.name).await?;
        writeln!(
            term.out,
            "apitoken {:?} revoked: it is rejected from now on, permanently.",
            args.name
        )?;
        Ok(())
    }

    /// Revokes without asking: for callers that asked the user themselves.
    pub async fn revoke_confirmed(&self, name: &str) -> Result<()> {
        self.revocable(name).await?;
        self.mark_revoked(name).await
    }

    /// Deletes the ApiToken; only a revoked one, so that removing a card
    /// never ends a working token by surprise.
    pub async fn delete_revoked(&self, name: &str) -> Result<()> {
        let token = self.get_token(name).await?;
        if !is_revoked(&token) {
            return Err(Error::Refused(format!(
                "apitoken {name:?} is not revoked: revoke it before deleting it"
            )));
        }
        match self.tokens().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::NotFound {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
            }),
            Err(e) => Err(self.api_error(e, "delete", TOKENS)),
        }
    }

    async fn revocable(&self, name: &str) -> Result<ApiToken> {
        let token = self.get_token(name).await?;
        if is_revoked(&token) {
            return Err(Error::Refused(format!(
                "apitoken {name:?} is already revoked; revocation is permanent, there is nothing to do"
            )));
        }
        Ok(token)
    }

    async fn mark_revoked(&self, name: &str) -> Result<()> {
        self.patch_spec(name, json!({ "revoked": true }), None)
            .await
    }

    fn tokens(&self) -> Api<ApiToken> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn get_token(&self, name: &str) -> Result<ApiToken> {
        match self.tokens().get(name).await {
            Ok(token) => Ok(token),
            Err(e) if is_not_found(&e) => {
                self.require_crd().await?;
                Err(Error::NotFound {
                    namespace: self.namespace.clone(),
                    name: name.to_owned(),
                })
            }
            Err(e) => Err(self.api_error(e, "get", TOKENS)),
        }
    }

    /// A 404 on a named token means either "no such token" or "no such
    /// resource type"; a list in the namespace tells them apart.
    async fn require_crd(&self) -> Result<()> {
        match self.tokens().list(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(Error::CrdNotInstalled),
            Err(e) => Err(self.api_error(e, "list", TOKENS)),
        }
    }

    /// Merge-patches `spec` fields. With `guard`, only if the object still
    /// has that resourceVersion (409 otherwise).
    async fn patch_spec(&self, name: &str, spec: Value, guard: Option<&str>) -> Result<()> {
        let mut patch = json!({ "spec": spec });
        if let Some(rv) = guard {
            patch["metadata"] = json!({ "resourceVersion": rv });
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        match self
            .tokens()
            .patch(name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict {
                name: name.to_owned(),
            }),
            Err(e) if is_not_found(&e) => Err(Error::NotFound {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
            }),
            Err(e) => Err(self.api_error(e, "patch", TOKENS)),
        }
    }

    /// Sets `spec.regeneration` to one more than `read` holds. A conflict
    /// caused by a status write (the operator folding usage) is retried; one
    /// caused by someone else regenerating is reported, so two concurrent
    /// `regenerate`s never silently issue twice.
    async fn bump_regeneration(
        &self,
        name: &str,
        read: &ApiToken,
        grace: Option<Duration>,
    ) -> Result<i64> {
        let seen = read.spec.regeneration;
        let target = seen + 1;
        let mut spec = json!({ "regeneration": target });
        if let Some(grace) = grace {
            spec["regenerationGracePeriod"] = json!(format_duration(grace));
        }
        let mut rv = read.metadata.resource_version.clone();
        for _ in 0..5 {
            match self.patch_spec(name, spec.clone(), rv.as_deref()).await {
                Err(Error::Conflict { .. }) => {
                    let now = self.get_token(name).await?;
                    if now.spec.regeneration != seen {
                        break;
                    }
                    rv = now.metadata.resource_version;
                }
                other => return other.map(|()| target),
            }
        }
        Err(Error::Conflict {
            name: name.to_owned(),
        })
    }

    /// Polls until the operator has issued `regeneration` and the delivery
    /// Secret holds that token, or `--timeout` passes.
    pub async fn wait_for_issue(&self, name: &str, regeneration: i64) -> Result<Issued> {
        let mut last = None;
        let outcome =
            tokio::time::timeout(self.timeout, self.poll_issue(name, regeneration, &mut last))
                .await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                what: if regeneration == 0 {
                    format!("issue apitoken {name:?}")
                } else {
                    format!("issue regeneration {regeneration} of apitoken {name:?}")
                },
                after: format_duration(self.timeout),
                namespace: self.namespace.clone(),
                detail: last
                    .map(|d| format!(" (last status: {d})"))
                    .unwrap_or_default(),
            }),
        }
    }

    async fn poll_issue(
        &self,
        name: &str,
        regeneration: i64,
        last: &mut Option<String>,
    ) -> Result<Issued> {
        loop {
            let resource = self.get_token(name).await?;
            match issue_state(&resource, regeneration) {
                IssueState::Waiting(detail) => *last = detail,
                IssueState::Rejected(message) => {
                    return Err(Error::OperatorRejected {
                        name: name.to_owned(),
                        message,
                    });
                }
                IssueState::NoDeliverySecret => {
                    return Err(Error::Undeliverable {
                        name: name.to_owned(),
                        reason: format!(
                            "its delivery Secret is already gone (reveal-once window over); run `kubectl apitoken regenerate {name}` for a new token"
                        ),
                    });
                }
                IssueState::Issued { prefix, secret } => {
                    let found = self
                        .secrets()
                        .get_opt(&secret)
                        .await
                        .map_err(|e| self.api_error(e, "get", SECRETS))?;
                    match found.map(|s| check_delivery(s.data.as_ref(), &prefix)) {
                        Some(Delivery::Ready(token)) => {
                            return Ok(Issued {
                                token,
                                secret,
                                resource,
                            });
                        }
                        Some(Delivery::Unusable(reason)) => {
                            return Err(Error::Undeliverable {
                                name: name.to_owned(),
                                reason: reason.to_owned(),
                            });
                        }
                        Some(Delivery::Stale) => {
                            *last = Some(format!(
                                "delivery Secret {secret:?} still holds the previous token"
                            ));
                        }
                        None => *last = Some(format!("delivery Secret {secret:?} not found")),
                    }
                }
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    fn warn_once(&self, term: &mut Terminal<'_>, issued: &Issued, reveal_once: bool) -> Result<()> {
        writeln!(
            term.err,
            "Warning: this is the only time kubectl apitoken shows this token. Store it now in your secret manager."
        )?;
        if reveal_once {
            writeln!(
                term.err,
                "Reveal-once: the delivery Secret {}/{} will be removed after the operator's reveal window.",
                self.namespace, issued.secret
            )?;
        } else {
            writeln!(
                term.err,
                "In-cluster consumers can mount it from Secret {}/{} (key `token`).",
                self.namespace, issued.secret
            )?;
        }
        Ok(())
    }

    fn api_error(&self, e: kube::Error, verb: &'static str, resource: &'static str) -> Error {
        self.api_error_in(e, verb, resource, false)
    }

    /// Maps a kube error to one user-facing line. API server messages are
    /// passed on: they name objects, never a token's plaintext.
    fn api_error_in(
        &self,
        e: kube::Error,
        verb: &'static str,
        resource: &'static str,
        all_namespaces: bool,
    ) -> Error {
        match e {
            kube::Error::Api(status) => match status.code {
                401 => Error::Unauthorized {
                    server: self.server.clone(),
                },
                403 => Error::Forbidden {
                    verb,
                    resource,
                    scope: if all_namespaces {
                        "all namespaces".into()
                    } else {
                        format!("namespace {:?}", self.namespace)
                    },
                },
                422 => Error::Invalid(status.message.replace('\n', " ")),
                code => Error::Api {
                    verb,
                    resource,
                    code,
                    message: status.message.replace('\n', " "),
                },
            },
            kube::Error::HyperError(_) | kube::Error::Service(_) => Error::NoCluster {
                server: self.server.clone(),
                cause: root_cause(&e),
            },
            other => Error::Kubeconfig(crate::connect::one_line(&other)),
        }
    }
}

/// The server-side-apply body of `create`: only the fields the user chose,
/// so the plugin's field manager owns nothing it did not set.
pub fn create_manifest(
    namespace: &str,
    args: &CreateArgs,
    expires_at: Option<DateTime<Utc>>,
) -> Value {
    let mut spec = json!({ "product": args.product });
    if let Some(d) = &args.description {
        spec["displayName"] = json!(d);
    }
    if let Some(at) = expires_at {
        spec["expiresAt"] = json!(rfc3339(at));
    }
    if !args.scopes.is_empty() {
        spec["scopes"] = json!(args.scopes);
    }
    if let Some(rps) = args.rate_limit {
        spec["rateLimit"] = json!({ "requestsPerSecond": rps });
        if let Some(burst) = args.burst {
            spec["rateLimit"]["burst"] = json!(burst);
        }
    }
    if args.reveal_once {
        spec["delivery"] = json!({ "mode": DeliveryMode::RevealOnce });
    }
    if !args.allow_sources.is_empty() {
        spec["allowedSourceRanges"] = json!(args.allow_sources);
    }
    if let Some(limit) = &args.usage_limit {
        spec["usageLimit"] = json!(limit);
    }
    json!({
        "apiVersion": "prodgy.io/v1",
        "kind": "ApiToken",
        "metadata": { "name": args.name, "namespace": namespace },
        "spec": spec,
    })
}

fn show_token(term: &mut Terminal<'_>, issued: &Issued) -> Result<()> {
    writeln!(term.out, "Token:  {}", issued.token.expose())?;
    writeln!(term.out, "Prefix: {}", issued.token.display_prefix())?;
    Ok(())
}

/// Until when the previous token keeps working after a regeneration, if
/// it still does.
pub fn previous_valid_until(issued: &Issued) -> Option<DateTime<Utc>> {
    let status = issued.resource.status.as_ref()?;
    status
        .previous_valid_until
        .filter(|until| *until > Utc::now())
}

fn delivery_mode(token: &ApiToken) -> Option<DeliveryMode> {
    token.spec.delivery.as_ref().and_then(|d| d.mode)
}

/// Why `activate` (`active`) or `deactivate` cannot help this token, if so.
fn toggle_refusal(token: &ApiToken, active: bool, now: DateTime<Utc>) -> Option<String> {
    match ended(token, now)? {
        Ended::Revoked if active => Some(
            "is revoked: revocation is permanent, so it cannot be activated again; create a new token"
                .into(),
        ),
        Ended::Revoked => Some("is revoked: it is already permanently inactive".into()),
        Ended::Expired(when) if active => Some(format!(
            "{when}: activating it would not make it usable; create a new token"
        )),
        Ended::Expired(_) => None,
    }
}

/// A state no `active` flag or regeneration can leave.
enum Ended {
    /// Revoked, for good.
    Revoked,
    /// Expired; "expired at …".
    Expired(String),
}

/// Whether the token has ended, and how, by the precedence of
/// [`Phase::of`] (revoked before expired).
fn ended(token: &ApiToken, now: DateTime<Utc>) -> Option<Ended> {
    let expiry = expired(token, now);
    match Phase::of(is_revoked(token), expiry.is_some(), true, true) {
        Phase::Revoked => Some(Ended::Revoked),
        Phase::Expired => expiry.map(Ended::Expired),
        _ => None,
    }
}

fn is_revoked(token: &ApiToken) -> bool {
    token.spec.revoked || token.status.as_ref().and_then(|s| s.phase) == Some(Phase::Revoked)
}

/// "expired at …" if the token has expired: by the operator's word or by
/// the clock (the proxy checks the clock too, so a lagging status changes
/// nothing).
fn expired(token: &ApiToken, now: DateTime<Utc>) -> Option<String> {
    let status = token.status.as_ref();
    let at = token.spec.expires_at.or(status.and_then(|s| s.expires_at));
    let by_status = status.and_then(|s| s.phase) == Some(Phase::Expired);
    match at {
        Some(at) if at <= now || by_status => Some(format!("expired at {}", rfc3339(at))),
        None if by_status => Some("has expired".into()),
        _ => None,
    }
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The innermost error: "Connection refused (os error 111)" rather than
/// three layers of client wrapping.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string().replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use prodgy_crds::{ApiTokenSpec, ApiTokenStatus, Scope};

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn args() -> CreateArgs {
        CreateArgs {
            name: "ci".into(),
            product: "acme".into(),
            expires: Some("30d".into()),
            scopes: vec![Scope::AgentsRead],
            description: Some("CI".into()),
            rate_limit: Some(5),
            burst: Some(10),
            reveal_once: true,
            allow_sources: vec![],
            usage_limit: crate::usage_limit::parse("1000/30d").ok(),
        }
    }

    #[test]
    fn the_manifest_holds_exactly_the_chosen_fields_and_parses_as_an_apitoken() {
        let m = create_manifest("team-a", &args(), Some(at("2027-01-01T00:00:00Z")));
        assert_eq!(
            m,
            json!({
                "apiVersion": "prodgy.io/v1",
                "kind": "ApiToken",
                "metadata": {"name": "ci", "namespace": "team-a"},
                "spec": {
                    "product": "acme",
                    "displayName": "CI",
                    "expiresAt": "2027-01-01T00:00:00Z",
                    "scopes": ["agents:read"],
                    "rateLimit": {"requestsPerSecond": 5, "burst": 10},
                    "delivery": {"mode": "RevealOnce"},
                    "usageLimit": {"requests": 1000, "per": "30d"}
                }
            })
        );
        let typed: ApiToken = serde_json::from_value(m).unwrap();
        assert_eq!(typed.spec.rate_limit.unwrap().burst(), 10);

        let minimal = CreateArgs {
            expires: None,
            scopes: vec![],
            description: None,
            rate_limit: None,
            burst: None,
            reveal_once: false,
            usage_limit: None,
            ..args()
        };
        assert_eq!(
            create_manifest("default", &minimal, None)["spec"],
            json!({"product": "acme"})
        );
    }

    #[test]
    fn expiry_is_judged_by_status_or_clock() {
        let now = at("2026-06-01T00:00:00Z");
        let spec: ApiTokenSpec = serde_json::from_str(r#"{"product":"acme"}"#).unwrap();
        let mut t = ApiToken::new("ci", spec);
        assert_eq!(expired(&t, now), None);
        t.spec.expires_at = Some(at("2026-07-01T00:00:00Z"));
        assert_eq!(expired(&t, now), None);
        t.spec.expires_at = Some(at("2026-05-01T00:00:00Z"));
        assert_eq!(
            expired(&t, now).as_deref(),
            Some("expired at 2026-05-01T00:00:00Z")
        );
        // The operator's word counts even if the clocks disagree.
        t.spec.expires_at = Some(at("2026-07-01T00:00:00Z"));
        t.status = Some(ApiTokenStatus {
            phase: Some(Phase::Expired),
            ..Default::default()
        });
        assert_eq!(
            expired(&t, now).as_deref(),
            Some("expired at 2026-07-01T00:00:00Z")
        );
        t.spec.expires_at = None;
        assert_eq!(expired(&t, now).as_deref(), Some("has expired"));
    }

    #[test]
    fn toggles_refuse_what_they_cannot_change() {
        let now = at("2026-06-01T00:00:00Z");
        let spec: ApiTokenSpec = serde_json::from_str(r#"{"product":"acme"}"#).unwrap();
        let mut t = ApiToken::new("ci", spec);
        assert_eq!(toggle_refusal(&t, true, now), None);
        assert_eq!(toggle_refusal(&t, false, now), None);
        // Deactivating an expired token is harmless; activating it is futile.
        t.spec.expires_at = Some(at("2026-05-01T00:00:00Z"));
        assert_eq!(toggle_refusal(&t, false, now), None);
        assert!(
            toggle_refusal(&t, true, now)
                .unwrap()
                .starts_with("expired at 2026-05-01")
        );
        t.spec.revoked = true;
        for active in [true, false] {
            assert!(
                toggle_refusal(&t, active, now)
                    .unwrap()
                    .starts_with("is revoked")
            );
        }
    }

    #[test]
    fn root_cause_is_the_innermost_error() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(root_cause(&e), "Connection refused (os error 111)");
    }

    #[test]
    fn allowed_sources_go_into_the_manifest() {
        let a = CreateArgs {
            allow_sources: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
            ..args()
        };
        let m = create_manifest("team-a", &a, None);
        assert_eq!(
            m["spec"]["allowedSourceRanges"],
            json!(["10.0.0.0/8", "2001:db8::/32"])
        );
        let typed: ApiToken = serde_json::from_value(m).unwrap();
        assert_eq!(typed.spec.allowed_source_ranges.len(), 2);
    }
}
