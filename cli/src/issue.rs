//! "Has the operator issued the token yet, and may we show it?" — pure.
//!
//! `create` and `regenerate` poll the ApiToken and ask [`issue_state`] after
//! each read; once it says [`IssueState::Issued`] they read the delivery
//! Secret and let [`check_delivery`] confirm that it holds the token the
//! status describes (same prefix), never an older one.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use prodgy_crds::apitoken::condition;
use prodgy_crds::{ApiToken, Token};

/// Where the operator is with issuing regeneration `n` of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssueState {
    /// Not yet; keep waiting. Carries the latest Ready condition, if any,
    /// for the timeout message.
    Waiting(Option<String>),
    /// Issued; the plaintext is in this Secret of the token's namespace.
    Issued {
        /// `status.prefix` of the new token.
        prefix: String,
        /// `status.deliverySecretName`.
        secret: String,
    },
    /// Issued, but the delivery Secret is already gone (reveal-once window).
    NoDeliverySecret,
    /// The operator will not issue it as specified.
    Rejected(String),
}

/// Decides from one read of the token whether regeneration `n` is issued.
pub fn issue_state(token: &ApiToken, regeneration: i64) -> IssueState {
    let Some(status) = &token.status else {
        return IssueState::Waiting(None);
    };
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY);
    let current = match (token.metadata.generation, status.observed_generation) {
        (Some(generation), Some(observed)) => observed >= generation,
        (None, _) => true,
        (Some(_), None) => false,
    };
    if let Some(ready) = ready
        && current
        && ready.status == "False"
        && ready.reason == condition::REASON_INVALID_SPEC
    {
        return IssueState::Rejected(ready.message.replace('\n', " "));
    }
    let issued = status
        .issued_regeneration
        .is_some_and(|r| r >= regeneration);
    match (issued, &status.prefix, &status.delivery_secret_name) {
        (true, Some(prefix), Some(secret)) => IssueState::Issued {
            prefix: prefix.clone(),
            secret: secret.clone(),
        },
        (true, Some(_), None) if current => IssueState::NoDeliverySecret,
        _ => IssueState::Waiting(ready.map(|c| {
            format!(
                "Ready={} {}: {}",
                c.status,
                c.reason,
                c.message.replace('\n', " ")
            )
        })),
    }
}

/// What the delivery Secret's data says about the token we wait for.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The Secret holds the token the status describes.
    Ready(Token),
    /// The Secret still holds an older token; the operator is mid-update.
    Stale,
    /// The Secret cannot be used; the reason never quotes its content.
    Unusable(&'static str),
}

/// Checks the delivery Secret's `data` against the expected prefix.
pub fn check_delivery(data: Option<&BTreeMap<String, ByteString>>, prefix: &str) -> Delivery {
    let Some(raw) = data.and_then(|d| d.get(prodgy_crds::delivery::TOKEN_KEY)) else {
        return Delivery::Unusable("its delivery Secret has no `token` key");
    };
    let Ok(text) = std::str::from_utf8(&raw.0) else {
        return Delivery::Unusable("its delivery Secret does not hold a well-formed token");
    };
    let Ok(token) = Token::parse(text.trim_end()) else {
        return Delivery::Unusable("its delivery Secret does not hold a well-formed token");
    };
    if token.display_prefix() == prefix {
        Delivery::Ready(token)
    } else {
        Delivery::Stale
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use prodgy_crds::{ApiTokenSpec, ApiTokenStatus, Phase};

    use super::*;

    fn token(status: Option<ApiTokenStatus>) -> ApiToken {
        let spec: ApiTokenSpec = serde_json::from_str(r#"{"product":"acme"}"#).unwrap();
        let mut t = ApiToken::new("ci", spec);
        t.metadata.generation = Some(3);
        t.status = status;
        t
    }

    fn ready(status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }

    fn issued(regeneration: i64) -> ApiTokenStatus {
        ApiTokenStatus {
            phase: Some(Phase::Active),
            prefix: Some("prod_abc".into()),
            issued_regeneration: Some(regeneration),
            delivery_secret_name: Some("ci-token".into()),
            observed_generation: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn waits_until_the_requested_regeneration_is_issued() {
        assert_eq!(issue_state(&token(None), 0), IssueState::Waiting(None));
        assert_eq!(
            issue_state(&token(Some(ApiTokenStatus::default())), 0),
            IssueState::Waiting(None)
        );
        assert_eq!(
            issue_state(&token(Some(issued(0))), 0),
            IssueState::Issued {
                prefix: "prod_abc".into(),
                secret: "ci-token".into()
            }
        );
        // Regenerate asked for 1; status still describes 0.
        assert!(matches!(
            issue_state(&token(Some(issued(0))), 1),
            IssueState::Waiting(_)
        ));
        assert!(matches!(
            issue_state(&token(Some(issued(1))), 1),
            IssueState::Issued { .. }
        ));
    }

    #[test]
    fn reports_the_operator_refusal_only_for_the_current_spec() {
        let mut status = ApiTokenStatus {
            observed_generation: Some(3),
            conditions: vec![ready("False", "InvalidSpec", "bad grace period\n\"x\"")],
            ..Default::default()
        };
        assert_eq!(
            issue_state(&token(Some(status.clone())), 0),
            IssueState::Rejected("bad grace period \"x\"".into())
        );
        // An older generation's refusal may already be fixed: keep waiting.
        status.observed_generation = Some(2);
        assert_eq!(
            issue_state(&token(Some(status)), 0),
            IssueState::Waiting(Some(
                "Ready=False InvalidSpec: bad grace period \"x\"".into()
            ))
        );
    }

    #[test]
    fn notices_a_delivery_secret_that_is_already_gone() {
        let gone = ApiTokenStatus {
            delivery_secret_name: None,
            ..issued(0)
        };
        assert_eq!(
            issue_state(&token(Some(gone.clone())), 0),
            IssueState::NoDeliverySecret
        );
        let lagging = ApiTokenStatus {
            observed_generation: Some(2),
            ..gone
        };
        assert!(matches!(
            issue_state(&token(Some(lagging)), 0),
            IssueState::Waiting(_)
        ));
    }

    fn data(token: &[u8]) -> BTreeMap<String, ByteString> {
        BTreeMap::from([("token".to_owned(), ByteString(token.to_vec()))])
    }

    #[test]
    fn delivery_must_hold_a_well_formed_token_with_the_status_prefix() {
        let t = Token::generate("prod").unwrap();
        let secret = data(t.expose().as_bytes());
        assert_eq!(
            check_delivery(Some(&secret), t.display_prefix()),
            Delivery::Ready(t.clone())
        );
        assert_eq!(check_delivery(Some(&secret), "prod_zzz"), Delivery::Stale);
        assert!(matches!(
            check_delivery(None, "prod_abc"),
            Delivery::Unusable(_)
        ));
        assert!(matches!(
            check_delivery(Some(&BTreeMap::new()), "prod_abc"),
            Delivery::Unusable(_)
        ));
        let mut broken = t.expose().as_bytes().to_vec();
        broken.pop();
        for bad in [broken, vec![0xff, 0xfe]] {
            match check_delivery(Some(&data(&bad)), t.display_prefix()) {
                Delivery::Unusable(why) => assert!(!why.contains(&t.expose()[8..])),
                other => panic!("accepted a broken token: {other:?}"),
            }
        }
    }
}
