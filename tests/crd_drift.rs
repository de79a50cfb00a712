//! The CRD YAML in `crds/` and in the Helm chart must be exactly what `ssm-operator crd` prints.
//! Regenerate both with `make crds`.

use std::path::Path;
use std::process::Command;

fn printed(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ssm-operator"))
        .arg("crd")
        .args(args)
        .output()
        .expect("run ssm-operator crd");
    assert!(out.status.success(), "ssm-operator crd failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 CRD")
}

fn assert_same(relative: &str, kind: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make crds`", path.display()));
    assert!(
        on_disk == printed(&[kind]),
        "{relative} differs from `ssm-operator crd {kind}`: run `make crds` and commit the result"
    );
}

#[test]
fn crds_dir_matches_the_rust_types() {
    assert_same("crds/commandinvocation.yaml", "commandinvocation");
    assert_same("crds/command.yaml", "command");
}

#[test]
fn helm_chart_crds_match_the_rust_types() {
    assert_same(
        "charts/ssm-operator/crds/commandinvocation.yaml",
        "commandinvocation",
    );
    assert_same("charts/ssm-operator/crds/command.yaml", "command");
}

#[test]
fn printed_crds_are_both_kinds_in_one_stream() {
    let all = printed(&[]);
    assert!(
        all.starts_with("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n")
    );
    assert_eq!(
        all,
        format!(
            "{}---\n{}",
            printed(&["commandinvocation"]),
            printed(&["command"])
        )
    );
    assert!(all.contains("name: commandinvocations.ssm.operator.dev"));
    assert!(all.contains("name: commands.ssm.operator.dev"));
}
