//! Credentials of one cluster: the service-account signing key (made with the `openssl` CLI)
//! and a static token file that makes one random bearer token a member of `system:masters`.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::Error;

/// The user the token authenticates as.
pub(crate) const ADMIN_USER: &str = "admin";

/// Files and the token made for one cluster.
#[derive(Debug)]
pub(crate) struct Credentials {
    /// RSA key that signs and verifies service-account tokens (PEM).
    pub sa_key: PathBuf,
    /// kube-apiserver `--token-auth-file`.
    pub token_file: PathBuf,
    /// The admin's bearer token.
    pub token: String,
}

impl Credentials {
    /// Writes `sa.key` and `tokens.csv` into `certs_dir`.
    pub(crate) async fn create(certs_dir: &Path) -> Result<Credentials, Error> {
        let sa_key = certs_dir.join("sa.key");
        generate_rsa_key(&sa_key).await?;

        let token = random_token()?;
        let token_file = certs_dir.join("tokens.csv");
        // token,user,uid,"group1,group2"
        let line = format!("{token},{ADMIN_USER},{ADMIN_USER}-uid,system:masters\n");
        std::fs::write(&token_file, line)
            .map_err(|e| Error::io(format!("writing {}", token_file.display()), e))?;
        Ok(Credentials {
            sa_key,
            token_file,
            token,
        })
    }
}

/// Runs `openssl genrsa -out <path> 2048`.
async fn generate_rsa_key(path: &Path) -> Result<(), Error> {
    let step = "generating the service-account key with `openssl genrsa`";
    let output = tokio::process::Command::new("openssl")
        .arg("genrsa")
        .arg("-out")
        .arg(path)
        .arg("2048")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::io(format!("{step} (is openssl installed?)"), e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Tool {
            step: step.to_string(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("reading /dev/urandom for the admin token", e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_key_and_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::create(dir.path()).await.unwrap();
        let key = std::fs::read_to_string(&creds.sa_key).unwrap();
        assert!(key.contains("PRIVATE KEY-----"), "{key}");
        assert_eq!(creds.token.len(), 32);
        assert!(creds.token.chars().all(|c| c.is_ascii_hexdigit()));
        let csv = std::fs::read_to_string(&creds.token_file).unwrap();
        assert_eq!(
            csv,
            format!("{},admin,admin-uid,system:masters\n", creds.token)
        );
        assert_ne!(random_token().unwrap(), random_token().unwrap());
    }
}
