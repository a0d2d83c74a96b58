//! The committed CRD YAML must be exactly what the types generate.

#[test]
fn committed_crd_matches_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/apitoken.yaml");
    let committed = std::fs::read_to_string(path).expect("crds/apitoken.yaml is missing");
    let generated = prodgy_crds::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/apitoken.yaml is stale: run `cargo run -p prodgy-crds --bin crdgen > crds/apitoken.yaml`"
    );
}
