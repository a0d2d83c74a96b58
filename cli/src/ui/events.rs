//! `GET /api/events`: a Kubernetes watch of ApiTokens, as server-sent
//! events. Each change sends the whole list of cards (`tokens`): a console
//! shows a handful of tokens, and a full list cannot drift from the
//! cluster the way applied deltas could. A failing watch sends `problem`
//! with the user-facing error and is retried with backoff, so the page can
//! show a banner and clear it when `tokens` arrives again.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use prodgy_crds::ApiToken;
use serde::Deserialize;
use serde_json::json;

use super::Console;
use super::api::{Failure, classify};
use crate::render::TokenView;
use crate::{Error, Session};

/// `?namespace=`; empty (or absent) means every namespace, which only a
/// console started with `-A` serves.
#[derive(Debug, Deserialize)]
pub struct Which {
    #[serde(default)]
    namespace: String,
}

/// The handler.
pub async fn events(State(console): State<Console>, Query(which): Query<Which>) -> Response {
    let all = which.namespace.is_empty();
    if all && !console.all_namespaces {
        return Failure(Error::Refused(
            "pick a namespace, or start the console with -A to see all of them".into(),
        ))
        .into_response();
    }
    let session = if all {
        console.session
    } else {
        console.session.in_namespace(&which.namespace)
    };
    Sse::new(stream(session, all))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The event stream of one page.
pub fn stream(session: Session, all: bool) -> impl Stream<Item = Result<Event, Infallible>> {
    let api: Api<ApiToken> = if all {
        Api::all(session.client().clone())
    } else {
        Api::namespaced(session.client().clone(), session.namespace())
    };
    // The client's read timeout is --timeout; a watch the server ends
    // before that is renewed quietly instead of failing as a dead read.
    let seconds = session.timeout().as_secs().saturating_sub(5).clamp(1, 290);
    let config = watcher::Config::default().timeout(u32::try_from(seconds).unwrap_or(290));
    let mut cards = Cards::default();
    watcher(api, config)
        .default_backoff()
        .filter_map(move |item| {
            let event = match item {
                Ok(change) => cards.apply(change).map(|list| {
                    Event::default()
                        .event("tokens")
                        .data(serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()))
                }),
                Err(e) => Some(problem(&watch_error(&session, e, all))),
            };
            futures::future::ready(event.map(Ok))
        })
}

fn problem(e: &Error) -> Event {
    let (_, code) = classify(e);
    let body = json!({ "code": code, "message": e.to_string(), "retrying": true });
    Event::default().event("problem").data(body.to_string())
}

fn watch_error(session: &Session, e: watcher::Error, all: bool) -> Error {
    match e {
        watcher::Error::InitialListFailed(e) => session.list_error(e, "list", all),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            session.list_error(e, "watch", all)
        }
        watcher::Error::WatchError(status) => {
            session.list_error(kube::Error::Api(status), "watch", all)
        }
        watcher::Error::NoResourceVersion => Error::Refused(
            "the API server's watch answers carry no resourceVersion; retrying".into(),
        ),
    }
}

/// The cards the page shows, kept from the watch's events.
#[derive(Debug, Default)]
struct Cards {
    shown: BTreeMap<(String, String), TokenView>,
    relisting: Option<BTreeMap<(String, String), TokenView>>,
}

impl Cards {
    /// Folds one event in; returns the list to send when it changed what
    /// the page should show (not in the middle of a relist).
    fn apply(&mut self, event: watcher::Event<ApiToken>) -> Option<Vec<TokenView>> {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                return None;
            }
            watcher::Event::InitApply(t) => {
                let view = TokenView::from_token(&t);
                self.relisting
                    .get_or_insert_default()
                    .insert(key(&view), view);
                return None;
            }
            watcher::Event::InitDone => {
                self.shown = self.relisting.take().unwrap_or_default();
            }
            watcher::Event::Apply(t) => {
                let view = TokenView::from_token(&t);
                self.shown.insert(key(&view), view);
            }
            watcher::Event::Delete(t) => {
                let view = TokenView::from_token(&t);
                self.shown.remove(&key(&view));
            }
        }
        Some(self.shown.values().cloned().collect())
    }
}

fn key(view: &TokenView) -> (String, String) {
    (view.namespace.clone(), view.name.clone())
}

#[cfg(test)]
mod tests {
    use prodgy_crds::ApiTokenSpec;

    use super::*;

    fn token(ns: &str, name: &str, usage: i64) -> ApiToken {
        let spec: ApiTokenSpec = serde_json::from_str(r#"{"product":"acme"}"#).unwrap();
        let mut t = ApiToken::new(name, spec);
        t.metadata.namespace = Some(ns.into());
        t.status = Some(prodgy_crds::ApiTokenStatus {
            usage,
            ..Default::default()
        });
        t
    }

    fn names(list: &[TokenView]) -> Vec<(String, i64)> {
        list.iter().map(|v| (v.name.clone(), v.usage)).collect()
    }

    #[test]
    fn a_relist_replaces_the_cards_at_once_and_changes_follow() {
        let mut cards = Cards::default();
        assert!(cards.apply(watcher::Event::Init).is_none());
        assert!(
            cards
                .apply(watcher::Event::InitApply(token("a", "ci", 1)))
                .is_none()
        );
        assert!(
            cards
                .apply(watcher::Event::InitApply(token("a", "bot", 0)))
                .is_none()
        );
        let first = cards.apply(watcher::Event::InitDone).unwrap();
        assert_eq!(names(&first), [("bot".into(), 0), ("ci".into(), 1)]);
        let grown = cards
            .apply(watcher::Event::Apply(token("a", "ci", 7)))
            .unwrap();
        assert_eq!(names(&grown), [("bot".into(), 0), ("ci".into(), 7)]);
        let gone = cards
            .apply(watcher::Event::Delete(token("a", "bot", 0)))
            .unwrap();
        assert_eq!(names(&gone), [("ci".into(), 7)]);
        // A relist after a broken watch drops what was deleted meanwhile.
        cards.apply(watcher::Event::Init);
        cards.apply(watcher::Event::InitApply(token("b", "new", 0)));
        assert_eq!(
            names(&cards.apply(watcher::Event::InitDone).unwrap()),
            [("new".into(), 0)]
        );
    }
}
