//! Test certificates made with the `openssl` command, as users make theirs: a CA, a server
//! certificate that CA signed, a self-signed server certificate. PEM files in a directory the
//! caller owns; every run of openssl is bounded.
//!
//! Not for the mesh's own identities (those come from `trellis-control`'s CA): these are the
//! certificates of things outside the mesh (an external HTTPS API, a gateway's credential).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::tools::{require, run_bounded};

/// EC P-256 keys: quick to generate, accepted by rustls, openssl and Python's ssl.
const NEW_EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Runs `openssl ARGS` in `dir` (bounded); its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = run_bounded(
        Command::new(require("openssl", "openssl"))
            .args(args)
            .current_dir(dir),
        Duration::from_secs(20),
    )?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A CA valid for a day: `<name>.pem` and `<name>.key` in `dir`.
pub fn ca(dir: &Path, name: &str) -> Result<(), String> {
    let (key, pem, subject) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name}"),
    );
    let mut args = vec!["req", "-x509"];
    args.extend(NEW_EC_KEY);
    args.extend([
        "-keyout",
        &key,
        "-out",
        &pem,
        "-days",
        "1",
        "-subj",
        &subject,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args)
}

/// A server certificate for DNS name `host`, signed by the CA `<ca>` in `dir` (made by
/// [`ca`]): `<name>.pem` and `<name>.key` in `dir`.
pub fn server_cert(dir: &Path, ca: &str, name: &str, host: &str) -> Result<(), String> {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    // An extension file rather than -copy_extensions, which openssl before 3.0 lacks.
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .map_err(|e| format!("{}: {e}", dir.join(&ext).display()))?;
    let subject = format!("/CN={host}");
    let mut args = vec!["req"];
    args.extend(NEW_EC_KEY);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
    openssl(dir, &args)?;
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ],
    )
}

/// A self-signed certificate for DNS name `host`, valid for a day: `<host>.crt` and
/// `<host>.key` in `dir`; returns their paths (certificate, key).
pub fn self_signed(dir: &Path, host: &str) -> Result<(PathBuf, PathBuf), String> {
    let (crt, key) = (format!("{host}.crt"), format!("{host}.key"));
    let (subject, san) = (format!("/CN={host}"), format!("subjectAltName=DNS:{host}"));
    let mut args = vec!["req", "-x509"];
    args.extend(NEW_EC_KEY);
    args.extend([
        "-days", "1", "-subj", &subject, "-addext", &san, "-keyout", &key, "-out", &crt,
    ]);
    openssl(dir, &args)?;
    Ok((dir.join(crt), dir.join(key)))
}

/// Istio's plug-in CA pattern for several clusters: one root, and per cluster an intermediate
/// (issuer) signed by it. Writes `dir/root.pem` and `dir/root.key`, and for each of `clusters`
/// a directory `dir/<cluster>` that `trellis-control --ca-dir` reads (`root.pem`, `issuer.pem`,
/// `issuer-key.pem`, PKCS#8); returns those directories in order. Certificates are valid for
/// three days, so the issuers outlive the control planes' 24 h leaves.
pub fn shared_root_ca_dirs(dir: &Path, clusters: &[&str]) -> Result<Vec<PathBuf>, String> {
    let mut args = vec!["req", "-x509"];
    args.extend(NEW_EC_KEY);
    args.extend([
        "-keyout",
        "root.key",
        "-out",
        "root.pem",
        "-days",
        "3",
        "-subj",
        "/O=trellis-test/CN=shared root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args)?;
    let root = std::fs::read(dir.join("root.pem")).map_err(|e| format!("root.pem: {e}"))?;
    let ext = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n";
    std::fs::write(dir.join("issuer.ext"), ext).map_err(|e| format!("issuer.ext: {e}"))?;
    let mut out = Vec::new();
    for cluster in clusters {
        let sub = dir.join(cluster);
        std::fs::create_dir_all(&sub).map_err(|e| format!("{}: {e}", sub.display()))?;
        let (key, csr, pem) = (
            format!("{cluster}/issuer-key.pem"),
            format!("{cluster}/issuer.csr"),
            format!("{cluster}/issuer.pem"),
        );
        let subject = format!("/O=trellis-test/CN=issuer {cluster}");
        let mut args = vec!["req"];
        args.extend(NEW_EC_KEY);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(dir, &args)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "root.pem",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "3",
                "-extfile",
                "issuer.ext",
            ],
        )?;
        std::fs::write(sub.join("root.pem"), &root).map_err(|e| format!("root.pem: {e}"))?;
        out.push(sub);
    }
    Ok(out)
}

/// A CA a user brings to the mesh, in Istio's `cacerts` file names, in `dir`: a root
/// (`root-cert.pem`, key `root-key.pem`, CN "`<name>` root"), an intermediate under it
/// (`ca-cert.pem`, `ca-key.pem`, CN "`<name>` intermediate", pathlen 0), `cert-chain.pem`
/// (intermediate then root); and, for refusals, a non-CA certificate under the root
/// (`leaf-cert.pem`, `leaf-key.pem`) and an unrelated key (`other-key.pem`). P-256 (PKCS#8).
pub fn plug_in_ca(dir: &Path, name: &str) -> Result<(), String> {
    let key = |file: &str| {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                file,
            ],
        )
    };
    let write = |file: &str, text: String| {
        std::fs::write(dir.join(file), text)
            .map_err(|e| format!("{}: {e}", dir.join(file).display()))
    };
    // `cert` for `cert_key`, signed by the root, with the extensions `ext`.
    let signed = |cert: &str, cert_key: &str, cn: &str, serial: &str, ext: &str| {
        let csr = format!("{cert}.csr");
        let ext_file = format!("{cert}.ext");
        write(&ext_file, ext.to_string())?;
        let subject = format!("/O=Test/CN={cn}");
        openssl(
            dir,
            &[
                "req", "-new", "-key", cert_key, "-subj", &subject, "-out", &csr,
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "root-cert.pem",
                "-CAkey",
                "root-key.pem",
                "-set_serial",
                serial,
                "-days",
                "30",
                "-extfile",
                &ext_file,
                "-out",
                cert,
            ],
        )
    };
    key("root-key.pem")?;
    write(
        "root.cnf",
        format!(
            "[req]\ndistinguished_name=dn\nx509_extensions=v3\nprompt=no\n[dn]\nO=Test\nCN={name} root\n\
             [v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
        ),
    )?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root-key.pem",
            "-config",
            "root.cnf",
            "-days",
            "30",
            "-out",
            "root-cert.pem",
        ],
    )?;
    key("ca-key.pem")?;
    signed(
        "ca-cert.pem",
        "ca-key.pem",
        &format!("{name} intermediate"),
        "0x4b1d",
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
         subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )?;
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .map_err(|e| format!("{}: {e}", dir.join(file).display()))
    };
    write(
        "cert-chain.pem",
        read("ca-cert.pem")? + &read("root-cert.pem")?,
    )?;
    key("leaf-key.pem")?;
    signed(
        "leaf-cert.pem",
        "leaf-key.pem",
        "not a CA",
        "0x1d2e3f",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n",
    )?;
    key("other-key.pem")
}
