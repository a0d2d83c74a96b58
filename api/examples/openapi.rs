//! Prints the OpenAPI document: `cargo run -p prodgy-api --example openapi`.
#![allow(clippy::print_stdout)]

fn main() {
    println!("{}", prodgy_api::openapi_document());
}
