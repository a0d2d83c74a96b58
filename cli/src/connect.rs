//! From `--kubeconfig`/`--context`/`--namespace` to a [`Session`], the way
//! kubectl resolves them: explicit flags, then KUBECONFIG, then
//! `~/.kube/config`, then the in-cluster service account.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::args::GlobalArgs;
use crate::{Error, Result, Session};

/// Loads the configuration and builds a client. Does not contact the API
/// server: an unreachable cluster is reported by the first request.
pub async fn session(global: &GlobalArgs) -> Result<Session> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        cluster: None,
        user: None,
    };
    let mut config = match &global.kubeconfig {
        Some(paths) if !paths.is_empty() => {
            let kubeconfig = read_kubeconfigs(paths)?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| Error::Kubeconfig(one_line(&e)))?
        }
        _ if global.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::Kubeconfig(one_line(&e)))?,
        _ => Config::infer().await.map_err(|e| {
            Error::Kubeconfig(format!(
                "{}; set KUBECONFIG or pass --kubeconfig",
                one_line(&e)
            ))
        })?,
    };
    // A dead address should fail within --timeout, not kube's 30 s default.
    config.connect_timeout = Some(global.timeout);
    config.read_timeout = Some(global.timeout);
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| Error::Kubeconfig(one_line(&e)))?;
    Ok(Session::new(client, namespace, global.timeout).with_server(server))
}

/// Reads and merges a ':'-separated list of kubeconfig files, first wins,
/// as kubectl does with KUBECONFIG; like kubectl it skips listed files that
/// do not exist, as long as one does.
fn read_kubeconfigs(paths: &str) -> Result<Kubeconfig> {
    let listed: Vec<PathBuf> = std::env::split_paths(paths)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    let mut merged: Option<Kubeconfig> = None;
    for path in &listed {
        if listed.len() > 1 && !path.exists() {
            continue;
        }
        let next = read_one(path)?;
        merged = Some(match merged {
            None => next,
            Some(m) => m.merge(next).map_err(|e| Error::Kubeconfig(one_line(&e)))?,
        });
    }
    merged.ok_or_else(|| Error::Kubeconfig(format!("no kubeconfig file found in {paths:?}")))
}

fn read_one(path: &Path) -> Result<Kubeconfig> {
    Kubeconfig::read_from(path)
        .map_err(|e| Error::Kubeconfig(format!("{}: {}", path.display(), one_line(&e))))
}

/// An error and its sources on one line (kube nests the useful part).
pub(crate) fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text.replace(['\n', '\r'], " ")
}
