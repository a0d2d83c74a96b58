//! Fuzzes the proxy's header and token parser: any bytes, split into any
//! number of `Authorization` values, must produce a token or a refusal
//! reason, never a panic; an accepted token must be a substring of the input
//! with a valid shape and checksum.
//!
//! The parser module is compiled straight from `proxy/src/auth.rs` so this
//! crate does not build pingora and kube under the sanitizer: they are not
//! reached by this code.
#![no_main]

#[path = "../../proxy/src/auth.rs"]
#[allow(dead_code, clippy::all)]
mod auth;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // 0x1f separates header values, so one input can hold zero, one or many.
    let values: Vec<&[u8]> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == 0x1f).collect()
    };
    match auth::bearer_token(values.iter().copied()) {
        Ok(token) => {
            assert_eq!(values.len(), 1);
            assert!(prodgy_crds::token::check_format(token).is_ok());
            let v = values[0];
            assert!(v.len() <= auth::MAX_AUTHORIZATION_LEN);
            assert!(v[..6].eq_ignore_ascii_case(b"bearer"));
            assert!(v.ends_with(token.as_bytes()));
        }
        Err(reason) => {
            // Every refusal maps to a status and a JSON body.
            assert!(matches!(reason.status(), 400 | 401 | 403 | 429));
            let body: serde_json::Value = serde_json::from_str(&reason.body()).unwrap();
            assert_eq!(body["error"]["code"], reason.code());
        }
    }
    let _ = auth::has_dot_segment(data);
});
