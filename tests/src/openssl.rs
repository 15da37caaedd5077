//! Certificates for tests, made by `openssl` (an independent implementation: what the service issues or accepts is
//! checked against it, not against our own code).

use std::path::Path;
use std::process::Command;

/// Runs `openssl` in `dir`; panics with its stderr when it fails. Returns stdout.
#[allow(clippy::panic, reason = "a test helper: a failing openssl fails the test")]
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let output = match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(output) => output,
        Err(e) => panic!("openssl cannot be run: {e}"),
    };
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Extensions of a CA certificate, as an openssl `-extfile`.
pub const CA_EXTENSIONS: &str = "basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n\
                             subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";
/// Extensions of a device certificate (v3, client authentication), as an openssl `-extfile`.
pub const DEVICE_EXTENSIONS: &str = "basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\n\
                                 extendedKeyUsage=clientAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n";

/// A P-256 key `{name}.key` and a certificate `{name}.pem` for `cn`, made by openssl with `extensions`: signed by
/// the CA files `{issuer}.pem`/`{issuer}.key`, or self-signed when `issuer` is `None`. Valid 30 days.
pub fn make_certificate(dir: &Path, name: &str, cn: &str, issuer: Option<&str>, extensions: &str) {
    make_certificate_for(dir, name, &format!("/CN={cn}"), issuer, extensions);
}

/// As [`make_certificate`], for the subject `subject` in openssl's `-subj` notation (`/O=Acme/OU=Line 2/CN=dev-1`).
#[allow(clippy::panic, reason = "a test helper: a file that cannot be written fails the test")]
pub fn make_certificate_for(dir: &Path, name: &str, subject: &str, issuer: Option<&str>, extensions: &str) {
    let (key, csr, ext, pem) =
        (format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"), format!("{name}.pem"));
    if let Err(e) = std::fs::write(dir.join(&ext), extensions) {
        panic!("cannot write {ext}: {e}");
    }
    openssl(dir, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &key]);
    openssl(dir, &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr]);
    let mut args = vec!["x509", "-req", "-in", &csr, "-days", "30", "-extfile", &ext, "-out", &pem];
    let (issuer_pem, issuer_key) = issuer.map(|i| (format!("{i}.pem"), format!("{i}.key"))).unzip();
    match (&issuer_pem, &issuer_key) {
        (Some(ca), Some(ca_key)) => args.extend(["-CA", ca, "-CAkey", ca_key, "-CAcreateserial"]),
        _ => args.extend(["-key", &key]),
    }
    openssl(dir, &args);
}

/// A CA `{name}.pem`/`{name}.key` (CN = name), self-signed when `issuer` is `None`.
pub fn make_ca(dir: &Path, name: &str, issuer: Option<&str>) {
    make_certificate(dir, name, name, issuer, CA_EXTENSIONS);
}

/// A device certificate `{name}.pem`/`{name}.key` for `cn` (v3, clientAuth) signed by the CA `issuer`.
pub fn make_device(dir: &Path, name: &str, cn: &str, issuer: &str) {
    make_certificate(dir, name, cn, Some(issuer), DEVICE_EXTENSIONS);
}
