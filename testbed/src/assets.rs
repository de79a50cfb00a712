//! Locating the envtest binaries: a directory holding `kube-apiserver`, `etcd` and `kubectl`
//! (and optionally `helm` and `kube-controller-manager`), named by `KUBEBUILDER_ASSETS` as in
//! controller-runtime's envtest. The project's `hack/envtest-assets.sh` builds such a
//! directory (with both optional binaries) and prints its path.

use std::path::{Path, PathBuf};

use crate::Error;

/// The environment variable naming the assets directory.
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";

/// Binaries the directory must contain.
const REQUIRED: [&str; 3] = ["kube-apiserver", "etcd", "kubectl"];

/// A checked assets directory.
#[derive(Debug, Clone)]
pub(crate) struct Assets {
    dir: PathBuf,
}

impl Assets {
    /// The directory named by `KUBEBUILDER_ASSETS`, checked.
    pub(crate) fn from_env() -> Result<Assets, Error> {
        match std::env::var_os(ASSETS_ENV) {
            Some(dir) if !dir.is_empty() => Assets::at(Path::new(&dir)),
            _ => Err(Error::AssetsUnset),
        }
    }

    /// `dir`, checked for the required binaries.
    pub(crate) fn at(dir: &Path) -> Result<Assets, Error> {
        let missing: Vec<String> = REQUIRED
            .iter()
            .filter(|name| !dir.join(name).is_file())
            .map(|name| name.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(Error::AssetsIncomplete {
                dir: dir.to_path_buf(),
                missing,
            });
        }
        // Absolute, so that commands keep working whatever their working directory is.
        let dir = std::path::absolute(dir)
            .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
        Ok(Assets { dir })
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `kube-apiserver`.
    pub(crate) fn kube_apiserver(&self) -> PathBuf {
        self.dir.join("kube-apiserver")
    }

    /// `etcd`.
    pub(crate) fn etcd(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    /// `kubectl`.
    pub(crate) fn kubectl(&self) -> PathBuf {
        self.dir.join("kubectl")
    }

    /// `kube-controller-manager`, if the directory has it (controller-runtime's prebuilt
    /// envtest binaries do not).
    pub(crate) fn kube_controller_manager(&self) -> Option<PathBuf> {
        Some(self.dir.join("kube-controller-manager")).filter(|path| path.is_file())
    }

    /// `helm` from the directory if it is there, else plain `helm` (looked up on `PATH`).
    pub(crate) fn helm(&self) -> PathBuf {
        let bundled = self.dir.join("helm");
        if bundled.is_file() {
            bundled
        } else {
            PathBuf::from("helm")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_directory_names_missing_files_and_the_script() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("etcd"), "").unwrap();
        let err = Assets::at(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(&err, Error::AssetsIncomplete { missing, .. }
            if missing == &["kube-apiserver".to_string(), "kubectl".to_string()]));
        assert!(text.contains("hack/envtest-assets.sh"), "{text}");
    }

    #[test]
    fn complete_directory_resolves_binaries() {
        let dir = tempfile::tempdir().unwrap();
        for name in REQUIRED {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let assets = Assets::at(dir.path()).unwrap();
        assert_eq!(assets.etcd(), dir.path().join("etcd"));
        assert_eq!(assets.helm(), PathBuf::from("helm"));
        assert_eq!(assets.kube_controller_manager(), None);
        std::fs::write(dir.path().join("kube-controller-manager"), "").unwrap();
        assert_eq!(
            assets.kube_controller_manager(),
            Some(dir.path().join("kube-controller-manager"))
        );
        std::fs::write(dir.path().join("helm"), "").unwrap();
        assert_eq!(assets.helm(), dir.path().join("helm"));
    }

    #[test]
    fn unset_error_names_the_script() {
        assert!(Error::AssetsUnset
            .to_string()
            .contains("hack/envtest-assets.sh"));
    }
}
