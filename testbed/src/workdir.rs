//! The temporary directory of one cluster: certificates, etcd data, logs, kubeconfig, helm
//! homes. It is removed on drop unless `TESTBED_KEEP=1` is set, in which case its path is
//! printed to stderr so the logs can be inspected.

use std::path::{Path, PathBuf};

use crate::Error;

/// The environment variable that keeps the directory after the cluster is gone.
pub const KEEP_ENV: &str = "TESTBED_KEEP";

/// A temporary directory laid out for one cluster.
#[derive(Debug)]
pub(crate) struct Workdir {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
}

impl Workdir {
    /// Creates a fresh `testbed-*` directory under the system temporary directory, with its
    /// `certs` and helm sub-directories.
    pub(crate) fn create() -> Result<Workdir, Error> {
        let dir = tempfile::Builder::new()
            .prefix("testbed-")
            .tempdir()
            .map_err(|e| Error::io("creating the temporary directory", e))?;
        let root = dir.path().to_path_buf();
        let workdir = Workdir {
            dir: Some(dir),
            root,
        };
        for sub in [
            workdir.certs_dir(),
            workdir.helm_cache(),
            workdir.helm_config(),
            workdir.helm_data(),
        ] {
            std::fs::create_dir_all(&sub)
                .map_err(|e| Error::io(format!("creating {}", sub.display()), e))?;
        }
        Ok(workdir)
    }

    /// The directory itself; the logs live here.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Service-account key, token file and the apiserver's self-signed serving certificate.
    pub(crate) fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }

    /// etcd's data directory (created by etcd).
    pub(crate) fn etcd_data(&self) -> PathBuf {
        self.root.join("etcd")
    }

    /// etcd's log file.
    pub(crate) fn etcd_log(&self) -> PathBuf {
        self.root.join("etcd.log")
    }

    /// kube-apiserver's log file.
    pub(crate) fn apiserver_log(&self) -> PathBuf {
        self.root.join("apiserver.log")
    }

    /// kube-controller-manager's log file.
    pub(crate) fn controller_manager_log(&self) -> PathBuf {
        self.root.join("controller-manager.log")
    }

    /// The kubeconfig file.
    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }

    /// `HELM_CACHE_HOME`.
    pub(crate) fn helm_cache(&self) -> PathBuf {
        self.root.join("helm").join("cache")
    }

    /// `HELM_CONFIG_HOME`.
    pub(crate) fn helm_config(&self) -> PathBuf {
        self.root.join("helm").join("config")
    }

    /// `HELM_DATA_HOME`.
    pub(crate) fn helm_data(&self) -> PathBuf {
        self.root.join("helm").join("data")
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if keep_requested() {
            let kept = dir.keep();
            eprintln!("testbed: {KEEP_ENV}=1, kept {}", kept.display());
        } else if let Err(e) = dir.close() {
            eprintln!("testbed: removing {}: {e}", self.root.display());
        }
    }
}

/// Whether `TESTBED_KEEP=1` is set.
fn keep_requested() -> bool {
    std::env::var_os(KEEP_ENV).is_some_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_created_and_removed() {
        let workdir = Workdir::create().unwrap();
        let root = workdir.root().to_path_buf();
        assert!(workdir.certs_dir().is_dir());
        assert!(workdir.helm_data().is_dir());
        assert!(root
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("testbed-"));
        drop(workdir);
        if !keep_requested() {
            assert!(!root.exists());
        }
    }
}
