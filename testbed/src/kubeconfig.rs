//! The cluster's kubeconfig file and kube clients made from it.
//!
//! The kubeconfig authenticates with the static bearer token and verifies TLS against the
//! apiserver's self-signed serving certificate (`certs/apiserver.crt`, written by
//! kube-apiserver's `--cert-dir` at start-up; it holds the certificate and its CA).

use std::path::Path;

use http::{HeaderName, HeaderValue};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;

/// The User-Agent of clients from [`TestCluster::client`](crate::TestCluster::client), so their requests can be told apart in logs.
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
///
/// Fails while a certificate file the kubeconfig trusts holds no whole certificate yet: kube
/// would build a client from an empty file that trusts nothing and fails every request.
pub(crate) async fn client(path: &Path) -> Result<kube::Client, Error> {
    let step = || format!("loading the kubeconfig {}", path.display());
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
        step: step(),
        source,
    })?;
    for ca_file in kubeconfig
        .clusters
        .iter()
        .filter_map(|c| c.cluster.as_ref()?.certificate_authority.as_deref())
    {
        let text = std::fs::read_to_string(ca_file)
            .map_err(|e| Error::io(format!("reading the certificate {ca_file}"), e))?;
        if !text.trim_end().ends_with("-----END CERTIFICATE-----") {
            return Err(Error::io(
                format!("reading the certificate {ca_file}"),
                std::io::Error::other("no whole certificate in it yet"),
            ));
        }
    }
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
    // Workspace builds link two rustls providers (ring via kube, aws-lc-rs via the AWS SDK);
    // rustls refuses to guess, so choose one before the first TLS config is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
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

    #[tokio::test]
    async fn a_certificate_file_not_yet_written_gives_no_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        let ca = dir.path().join("apiserver.crt");
        write(&path, "https://127.0.0.1:1", &ca, "admin", "t").unwrap();
        let text = |r: Result<kube::Client, Error>| r.err().map(|e| e.to_string());

        let missing = text(client(&path).await).unwrap();
        assert!(missing.contains("apiserver.crt"), "{missing}");
        std::fs::write(&ca, "").unwrap();
        let empty = text(client(&path).await).unwrap();
        assert!(empty.contains("no whole certificate"), "{empty}");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\nMIIB").unwrap();
        let half = text(client(&path).await).unwrap();
        assert!(half.contains("no whole certificate"), "{half}");
    }

    #[tokio::test]
    async fn client_sends_the_user_agent() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        // Plain HTTP, so that no certificate is needed to see the request.
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             current-context: x\n"
        );
        std::fs::write(&path, text).unwrap();
        let client = client(&path).await.unwrap();

        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed before the headers ended");
                request.extend_from_slice(&buf[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8(request).unwrap().to_lowercase()
        });
        let request = http::Request::get("/readyz").body(Vec::new()).unwrap();
        assert_eq!(client.request_text(request).await.unwrap(), "ok");
        let headers = server.await.unwrap();
        let agents: Vec<&str> = headers
            .lines()
            .filter(|l| l.starts_with("user-agent:"))
            .collect();
        assert_eq!(
            agents,
            [format!("user-agent: {}", USER_AGENT.to_lowercase())]
        );
        assert!(headers.contains("authorization: bearer t"), "{headers}");
    }
}
