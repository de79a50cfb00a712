//! The CRD YAML in `crds/` and in the Helm chart must be exactly what `ssm-operator crd` prints.
//! Regenerate both with `make crds`.

use std::path::Path;
use std::process::Command;

fn printed_crd() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ssm-operator"))
        .arg("crd")
        .output()
        .expect("run ssm-operator crd");
    assert!(out.status.success(), "ssm-operator crd failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 CRD")
}

fn assert_same(relative: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
    assert!(
        on_disk == printed_crd(),
        "{relative} differs from `ssm-operator crd`: run `make crds` and commit the result"
    );
}

#[test]
fn crds_dir_matches_the_rust_types() {
    assert_same("crds/commandinvocation.yaml");
}

#[test]
fn helm_chart_crd_matches_the_rust_types() {
    assert_same("charts/ssm-operator/crds/commandinvocation.yaml");
}

#[test]
fn printed_crd_is_the_commandinvocation_crd() {
    let crd = printed_crd();
    assert!(
        crd.starts_with("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n")
    );
    assert!(crd.contains("name: commandinvocations.ssm.operator.dev"));
}
