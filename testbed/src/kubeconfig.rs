//! The cluster's kubeconfig file and kube clients made from it.
//!
//! The kubeconfig authenticates with the static bearer token and verifies TLS against the
//! apiserver's self-signed serving certificate (`certs/apiserver.crt`, written by
//! kube-apiserver's `--cert-dir` at start-up; it holds the certificate and its CA).

use std::path::Path;

use http::{HeaderName, HeaderValue};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;

/// The User-Agent of clients from [`client`], so their requests can be told apart in logs.
pub const USER_AGENT: &str = concat!("testbed/", env!("CARGO_PKG_VERSION"));

/// Name of the cluster, user and context in the kubeconfig.
const CONTEXT: &str = "envtest";

/// Writes a kubeconfig for `server` with `token`, trusting the certificate in `ca_file`.
pub(crate) fn write(
    path: &Path,
    server: &str,
    ca_file: &Path,
    user: &str,
    token: &str,
) -> Result<(), Error> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": CONTEXT,
            "cluster": {
                "server": server,
                "certificate-authority": ca_file.to_string_lossy(),
            },
        }],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
    });
    let step = || format!("writing the kubeconfig {}", path.display());
    let text = serde_yaml_ng::to_string(&config)
        .map_err(|e| Error::io(step(), std::io::Error::other(e)))?;
    std::fs::write(path, text).map_err(|e| Error::io(step(), e))
}

/// A client from the kubeconfig at `path`, sending [`USER_AGENT`].
pub(crate) async fn client(path: &Path) -> Result<kube::Client, Error> {
    let step = || format!("loading the kubeconfig {}", path.display());
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
        step: step(),
        source,
    })?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                step: step(),
                source,
            })?;
    config.headers.push((
        HeaderName::from_static("user-agent"),
        HeaderValue::from_static(USER_AGENT),
    ));
    kube::Client::try_from(config).map_err(|source| Error::Client {
        step: "building a kube client".to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_kubeconfig_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        let ca = dir.path().join("certs").join("apiserver.crt");
        write(&path, "https://127.0.0.1:12345", &ca, "admin", "s3cret").unwrap();
        let kc = Kubeconfig::read_from(&path).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("envtest"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:12345"));
        assert_eq!(
            cluster.certificate_authority.as_deref(),
            Some(ca.to_str().unwrap())
        );
        assert_eq!(cluster.insecure_skip_tls_verify, None);
        assert_eq!(kc.auth_infos[0].name, "admin");
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("token: s3cret"));
    }
}
