//! The cleanup finalizer, through kube-runtime's `finalizer` helper: it adds
//! [`FINALIZER`] before a token's first pass (with a JSON patch that tests
//! the list it extends) and removes it only after [`cleanup`] succeeded.
//! The hashed Secret lives in another namespace, so an owner reference
//! cannot collect it: without the finalizer a deleted token's hash would
//! outlive it and keep working.

use std::sync::Arc;

use kube::{
    ResourceExt,
    api::{Api, DeleteParams, ListParams},
    runtime::{
        controller::Action,
        finalizer::{self, finalizer},
    },
};
use prodgy_crds::{ApiToken, HashedRecord, hashed};
use tracing::info;

use super::{Context, lock, reconcile};
use crate::{
    Error, Result,
    plan::{FINALIZER, TokenId},
};

/// One pass for `token`: [`reconcile::apply`] while it lives, [`cleanup`]
/// once it is being deleted.
pub(super) async fn guarded(
    ctx: &Context,
    tokens: &Api<ApiToken>,
    token: &Arc<ApiToken>,
    id: &TokenId,
) -> Result<Action> {
    finalizer(tokens, FINALIZER, token.clone(), |event| async move {
        match event {
            finalizer::Event::Apply(live) => reconcile::apply(ctx, tokens, &live, id).await,
            finalizer::Event::Cleanup(_) => cleanup(ctx, id).await,
        }
    })
    .await
    .map_err(Error::from)
}

/// Deletes both Secrets. The delivery Secret has an owner reference, but is
/// deleted here too so cleanup does not depend on the garbage collector's
/// timing.
async fn cleanup(ctx: &Context, id: &TokenId) -> Result<Action> {
    let hashed_secrets = ctx.secrets(&ctx.cfg.plan.hashed_namespace);
    match hashed_secrets
        .delete(
            &HashedRecord::secret_name(&id.uid),
            &DeleteParams::default(),
        )
        .await
    {
        Ok(_) => ctx.metrics.secret_written("hashed", "delete"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    let delivery = ctx.secrets(&id.namespace);
    let ours = ListParams::default().labels(&hashed::delivery_selector(Some(&id.uid)));
    for secret in delivery.list(&ours).await? {
        match delivery
            .delete(&secret.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => ctx.metrics.secret_written("delivery", "delete"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    lock(&ctx.usage_writes).remove(&id.uid);
    lock(&ctx.failures).remove(&id.uid);
    info!(apitoken = %format!("{}/{}", id.namespace, id.name), "deleted its Secrets");
    Ok(Action::await_change())
}
