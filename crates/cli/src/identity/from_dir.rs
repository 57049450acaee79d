//! `prepare --from-dir DIR`: the CA the user brings, as Istio's `cacerts` files in `DIR`,
//! read here and sent as the body of `POST /api/v1/identity/rotate/prepare`. The control plane
//! checks them (as it checks the plug-in CA Secret); this side only reads the files, so a file
//! that cannot be read is named with its path before anything is sent.

use std::path::Path;

/// Required files, then the optional one (Istio's names).
const REQUIRED: [&str; 3] = ["root-cert.pem", "ca-cert.pem", "ca-key.pem"];
const OPTIONAL: &str = "cert-chain.pem";

/// The request body: `{"root-cert.pem": PEM, "ca-cert.pem": PEM, "ca-key.pem": PEM,
/// "cert-chain.pem"?: PEM}`; an error names the file and what is wrong with it.
pub fn body(dir: &Path) -> Result<Vec<u8>, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let read = |name: &str| -> Result<Option<String>, String> {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| format!("{} is not UTF-8 PEM text", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    };
    let mut pems = serde_json::Map::new();
    for name in REQUIRED {
        let text = read(name)?.ok_or_else(|| {
            format!(
                "{} is missing (root-cert.pem, ca-cert.pem and ca-key.pem are required)",
                dir.join(name).display()
            )
        })?;
        pems.insert(name.to_string(), text.into());
    }
    if let Some(text) = read(OPTIONAL)? {
        pems.insert(OPTIONAL.to_string(), text.into());
    }
    serde_json::to_vec(&pems).map_err(|e| format!("cannot encode the request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cacerts_files_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in REQUIRED {
            std::fs::write(d.join(name), format!("pem of {name}")).unwrap();
        }
        let sent: serde_json::Value = serde_json::from_slice(&body(d).unwrap()).unwrap();
        assert_eq!(sent["ca-key.pem"], "pem of ca-key.pem");
        assert!(sent.get(OPTIONAL).is_none());
        std::fs::write(d.join(OPTIONAL), "chain").unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&body(d).unwrap()).unwrap();
        assert_eq!(sent[OPTIONAL], "chain");
        std::fs::remove_file(d.join("ca-key.pem")).unwrap();
        let err = body(d).unwrap_err();
        assert!(err.contains("ca-key.pem is missing"), "{err}");
        std::fs::write(d.join("ca-key.pem"), [0xff, 0xfe]).unwrap();
        let err = body(d).unwrap_err();
        assert!(err.ends_with("ca-key.pem is not UTF-8 PEM text"), "{err}");
        assert!(body(&d.join("nowhere")).is_err());
    }
}
