//! Test support: a stand-in for the operator's issuing and status writes,
//! and a runner that parses a command line and captures what the user sees.
//!
//! The stand-in is legitimate because the plugin's contract is with the
//! ApiToken resource and its delivery Secret, not with the operator: it
//! writes exactly what the contract (crds/src/apitoken.rs and the shared
//! delivery-Secret facts) says the operator writes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use clap::Parser;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use kubectl_apitoken::{Cli, Session, Terminal};
use prodgy_crds::{ApiToken, ApiTokenStatus, Phase, Token};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// How the stand-in operator behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Issue tokens, keep phases true.
    Issue,
    /// Refuse every spec with Ready=False/InvalidSpec and this message.
    Reject(String),
    /// Issue, but the delivery Secret is already gone (reveal window over).
    DeliveryGone,
    /// Issue, but write something that is not a token into the Secret.
    CorruptDelivery,
}

/// A running stand-in operator; aborted on drop.
pub struct FakeOperator(JoinHandle<()>);

impl Drop for FakeOperator {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the stand-in: every 50 ms, reconcile every ApiToken.
pub fn spawn_operator(client: Client, mode: Mode) -> FakeOperator {
    FakeOperator(tokio::spawn(async move {
        loop {
            if let Ok(list) = Api::<ApiToken>::all(client.clone())
                .list(&ListParams::default())
                .await
            {
                for token in list.items {
                    reconcile(&client, &token, &mode).await.unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }))
}

async fn reconcile(client: &Client, token: &ApiToken, mode: &Mode) -> anyhow::Result<()> {
    let ns = token.namespace().unwrap();
    let name = token.name_any();
    let old = token.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let generation = token.metadata.generation;
    if let Mode::Reject(message) = mode {
        status.observed_generation = generation;
        status.phase = Some(Phase::Pending);
        status.conditions = vec![ready("False", "InvalidSpec", message)];
        return write_status(client, &ns, &name, &old, &status).await;
    }
    let due = status
        .issued_regeneration
        .is_none_or(|r| r < token.spec.regeneration);
    if due && !token.spec.revoked {
        let plaintext = Token::generate("prod")?;
        let secret_name = token
            .spec
            .delivery
            .as_ref()
            .and_then(|d| d.secret_name.clone())
            .unwrap_or_else(|| format!("{name}-token"));
        let stored = if *mode == Mode::CorruptDelivery {
            format!("{}-not-a-token", plaintext.display_prefix())
        } else {
            plaintext.expose().to_owned()
        };
        if *mode != Mode::DeliveryGone {
            write_secret(
                client,
                token,
                &secret_name,
                &stored,
                plaintext.display_prefix(),
            )
            .await?;
        }
        if status.issued_regeneration.is_some() {
            let grace = token
                .spec
                .regeneration_grace_period
                .as_deref()
                .map(prodgy_crds::duration::parse)
                .transpose()?
                .unwrap_or_default();
            status.previous_valid_until =
                (!grace.is_zero()).then(|| Utc::now() + chrono::Duration::from_std(grace).unwrap());
        }
        status.prefix = Some(plaintext.display_prefix().to_owned());
        status.created_at = Some(Utc::now());
        status.issued_regeneration = Some(token.spec.regeneration);
        status.delivery_secret_name = (*mode != Mode::DeliveryGone).then_some(secret_name);
        status.hashed_secret_name = Some(format!("apitoken-{}", token.uid().unwrap()));
        status.hashed_secret_namespace = Some("prodgy-tokens".into());
    }
    let phase = if token.spec.revoked {
        Phase::Revoked
    } else if token.spec.expires_at.is_some_and(|at| at <= Utc::now()) {
        Phase::Expired
    } else if !token.spec.active {
        Phase::Inactive
    } else {
        Phase::Active
    };
    if status.prefix.is_some() || phase == Phase::Revoked {
        status.phase = Some(phase);
    }
    status.expires_at = token.spec.expires_at;
    status.observed_generation = generation;
    let (ready_status, reason) = match phase {
        Phase::Active => ("True", phase.as_str()),
        _ => ("False", phase.as_str()),
    };
    if status.conditions.first().is_none_or(|c| c.reason != reason) {
        status.conditions = vec![ready(ready_status, reason, "set by the test operator")];
    }
    write_status(client, &ns, &name, &old, &status).await
}

fn ready(status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: None,
    }
}

async fn write_status(
    client: &Client,
    ns: &str,
    name: &str,
    old: &ApiTokenStatus,
    new: &ApiTokenStatus,
) -> anyhow::Result<()> {
    if old != new {
        Api::<ApiToken>::namespaced(client.clone(), ns)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": new })),
            )
            .await?;
    }
    Ok(())
}

async fn write_secret(
    client: &Client,
    token: &ApiToken,
    name: &str,
    plaintext: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.to_owned());
    secret.metadata.namespace = token.namespace();
    secret.metadata.labels = Some(BTreeMap::from([(
        "prodgy.io/token-name".to_owned(),
        token.name_any(),
    )]));
    secret.metadata.owner_references = Some(vec![OwnerReference {
        api_version: ApiToken::api_version(&()).into_owned(),
        kind: ApiToken::kind(&()).into_owned(),
        name: token.name_any(),
        uid: token.uid().unwrap(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    secret.type_ = Some("Opaque".into());
    secret.data = Some(BTreeMap::from([
        (
            "token".to_owned(),
            ByteString(plaintext.as_bytes().to_vec()),
        ),
        ("prefix".to_owned(), ByteString(prefix.as_bytes().to_vec())),
    ]));
    Api::<Secret>::namespaced(client.clone(), &token.namespace().unwrap())
        .patch(
            name,
            &PatchParams::apply("prodgy-test-operator").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// Creates an ApiToken with `spec` and, if given, a status, the way a user
/// and then the operator would have left it.
pub async fn seed(client: &Client, ns: &str, name: &str, spec: Value, status: Option<Value>) {
    let api = Api::<ApiToken>::namespaced(client.clone(), ns);
    let token: ApiToken = serde_json::from_value(json!({
        "apiVersion": "prodgy.io/v1",
        "kind": "ApiToken",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &token).await.unwrap();
    if let Some(status) = status {
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .unwrap();
    }
}

/// The stored ApiToken.
pub async fn fetch(client: &Client, ns: &str, name: &str) -> ApiToken {
    Api::<ApiToken>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

/// What one command printed, and how it ended.
#[derive(Debug)]
pub struct Run {
    /// The command's result.
    pub result: kubectl_apitoken::Result<()>,
    /// Everything written to stdout.
    pub out: String,
    /// Everything written to stderr.
    pub err: String,
}

impl Run {
    /// The error message; panics if the command succeeded.
    pub fn error(&self) -> String {
        match &self.result {
            Ok(()) => panic!("command succeeded; stdout:\n{}", self.out),
            Err(e) => e.to_string(),
        }
    }

    /// Panics with the captured output unless the command succeeded.
    pub fn ok(self) -> Self {
        if let Err(e) = &self.result {
            panic!(
                "command failed: {e}\nstdout:\n{}\nstderr:\n{}",
                self.out, self.err
            );
        }
        self
    }
}

/// How the terminal looks to the command.
#[derive(Clone, Copy, Debug)]
pub enum Tty<'a> {
    /// Pipes everywhere (CI, scripts).
    None,
    /// stdout and stdin are a terminal; stdin holds these answers.
    Interactive(&'a str),
}

/// Parses `args` as the binary would (`kubectl apitoken …`) and runs the
/// command against `client`, capturing stdout and stderr.
pub async fn exec(client: &Client, args: &[&str], tty: Tty<'_>) -> Run {
    let cli = Cli::try_parse_from(std::iter::once("kubectl-apitoken").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?} does not parse: {e}"));
    let namespace = cli
        .global
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let session = Session::new(client.clone(), namespace, cli.global.timeout);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut answers = match tty {
        Tty::None => "",
        Tty::Interactive(a) => a,
    }
    .as_bytes();
    let mut term = Terminal {
        out: &mut out,
        err: &mut err,
        input: match tty {
            Tty::None => None,
            Tty::Interactive(_) => Some(&mut answers),
        },
        stdout_is_tty: matches!(tty, Tty::Interactive(_)),
    };
    let result = session.run(&cli.command, &mut term).await;
    Run {
        result,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

/// Extracts the token from `Token:  <token>` in a command's stdout.
pub fn shown_token(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Token:  "))
        .unwrap_or_else(|| panic!("no token line in {out:?}"))
        .to_owned()
}

/// The plaintext in a delivery Secret, as stored by the server.
pub async fn delivered(client: &Client, ns: &str, secret: &str) -> String {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get(secret)
        .await
        .unwrap();
    String::from_utf8(s.data.unwrap()["token"].0.clone()).unwrap()
}
