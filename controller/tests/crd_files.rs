//! The CRDs committed under charts/deskpod/crds are exactly what the Rust types generate.

use deskpod_controller::crd;
use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/deskpod/crds");
    let mut expected: Vec<String> = Vec::new();
    for crd in crd::all() {
        let name = crd::file_name(&crd);
        let generated = crd::to_yaml(&crd).expect("CRDs serialize to YAML");
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            committed == generated,
            "charts/deskpod/crds/{name} is stale or missing; regenerate with \
             `cargo run -p deskpod-controller -- crd --out-dir charts/deskpod/crds`"
        );
        expected.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .expect("charts/deskpod/crds exists")
        .map(|e| e.expect("readable entry").file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(present, expected, "charts/deskpod/crds holds files no Rust type generates");
}
