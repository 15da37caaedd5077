//! The crate against the openssl CLI (3.0): CSRs and CAs made by openssl go in, what we issue is read and verified
//! by openssl. Each test names the behaviour it checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{Scratch, days, now};
use zerotouch_pki::{
    CaError, CaKey, ChainError, CsrError, IssuingCa, KeyAlgorithm, KeyPolicy, Passphrase, Profile, ProofError,
    RevocationReason, Revoked, Serial, ca_csr, certificate_pem, certs_only_pkcs7, check_csr, crl, crl_pem,
    development_hierarchy, est_base64, issue, trust_bundle_pem, verification_code, verify_chain,
    verify_proof_of_possession,
};

const CRL_URL: &str = "http://dps.example.com/pki/crl/ica-1";

fn profile() -> Profile {
    Profile::new(CRL_URL, 30).unwrap()
}

/// Writes root.pem, ica.pem, bundle.pem and leaf.pem for an issued chain.
fn write_chain(s: &Scratch, chain: &[Vec<u8>]) {
    s.write("leaf.pem", certificate_pem(&chain[0]));
    s.write("ica.pem", certificate_pem(&chain[1]));
    s.write("root.pem", certificate_pem(&chain[2]));
    s.write("bundle.pem", trust_bundle_pem(&chain[1..]));
}

/// Device certificates for openssl-made P-256 and P-384 CSRs verify with `openssl verify`, as TLS clients, against
/// the root with the issuing CA untrusted and against the trust bundle; P-384 CAs sign with SHA-384.
#[test]
fn openssl_csrs_are_issued_certificates_that_openssl_verifies() {
    for (curve, algorithm, signature) in [
        ("P-256", KeyAlgorithm::EcdsaP256, "ecdsa-with-SHA256"),
        ("P-384", KeyAlgorithm::EcdsaP384, "ecdsa-with-SHA384"),
    ] {
        let s = Scratch::new();
        let (_, ca) = development_hierarchy(algorithm, now()).unwrap();
        let csr = s.csr("dev", &format!("ec:{curve}"), "/CN=device-1", &[]);
        let checked = check_csr(&csr, "device-1", &KeyPolicy::default()).unwrap();
        let issued = issue(&ca, &checked, "thermostat-1", &profile(), now()).unwrap();
        assert_eq!(issued.chain_der.len(), 3);
        write_chain(&s, &issued.chain_der);
        let out =
            s.ok(&["verify", "-CAfile", "root.pem", "-untrusted", "ica.pem", "-purpose", "sslclient", "leaf.pem"]);
        assert!(out.contains("leaf.pem: OK"), "{out}");
        let out = s.ok(&["verify", "-CAfile", "bundle.pem", "leaf.pem"]);
        assert!(out.contains("leaf.pem: OK"), "{out}");
        let text = s.text(&issued.der);
        assert!(text.contains(&format!("Signature Algorithm: {signature}")), "{curve}: {text}");
        // The device key in the certificate is the one openssl generated.
        let theirs = s.ok(&["pkey", "-in", "dev.key", "-pubout"]);
        let ours = s.ok(&["x509", "-in", "leaf.pem", "-pubkey", "-noout"]);
        assert_eq!(theirs, ours);
    }
}

/// What openssl reads in an issued certificate is the profile: subject CN = device id, clientAuth only, Digital
/// Signature only and critical, CA:FALSE critical, the CRL URL, AKI = the issuing CA's SKI, an SKI, a 16-byte
/// serial equal to `serial_hex`, and 30 days of validity.
#[test]
fn openssl_reads_the_device_profile_in_issued_certificates() {
    let s = Scratch::new();
    let (_, ca) = development_hierarchy(KeyAlgorithm::EcdsaP256, now()).unwrap();
    let csr = s.csr("dev", "ec:P-256", "/CN=device-1/O=ignored", &[]);
    let checked = check_csr(&csr, "device-1", &KeyPolicy::default()).unwrap();
    let issued = issue(&ca, &checked, "thermostat-1", &profile(), now()).unwrap();
    let text = s.text(&issued.der);
    let after = |heading: &str| -> String {
        let mut lines = text.lines().skip_while(|line| !line.contains(heading));
        let head = lines.next().unwrap_or_else(|| panic!("no {heading} in {text}"));
        format!("{}\n{}", head.trim(), lines.next().unwrap_or("").trim())
    };
    assert!(text.contains("Subject: CN = thermostat-1\n"), "{text}");
    assert_eq!(after("X509v3 Extended Key Usage"), "X509v3 Extended Key Usage:\nTLS Web Client Authentication");
    assert_eq!(after("X509v3 Key Usage"), "X509v3 Key Usage: critical\nDigital Signature");
    assert_eq!(after("X509v3 Basic Constraints"), "X509v3 Basic Constraints: critical\nCA:FALSE");
    assert!(text.contains(&format!("URI:{CRL_URL}")), "{text}");
    let aki = after("X509v3 Authority Key Identifier");
    let ica_ski = after_in(&s.text(ca.certificate_der()), "X509v3 Subject Key Identifier");
    assert!(aki.ends_with(&ica_ski), "AKI {aki} is not the ICA's SKI {ica_ski}");
    assert_eq!(ica_ski.replace(':', "").to_lowercase(), hex(ca.key_identifier()));
    assert!(!after_in(&text, "X509v3 Subject Key Identifier").is_empty());
    assert!(!text.contains("Subject Alternative Name"));

    let leaf = s.write("leaf.der", &issued.der);
    let serial = s.ok(&["x509", "-inform", "DER", "-in", &leaf, "-serial", "-noout"]);
    let serial = serial.trim().trim_start_matches("serial=");
    assert_eq!(serial.len(), 32, "16-byte serial: {serial}");
    assert_eq!(serial.to_lowercase(), issued.serial_hex);
    let fingerprint = s.ok(&["x509", "-inform", "DER", "-in", &leaf, "-fingerprint", "-sha256", "-noout"]);
    assert!(fingerprint.to_lowercase().replace(':', "").contains(&issued.sha256_thumbprint));

    // Valid for 30 days from now (minus 5 minutes back-dating), not 31.
    let file = leaf;
    s.ok(&["x509", "-inform", "DER", "-in", &file, "-noout", "-checkend", &(29 * 86_400).to_string()]);
    assert!(
        !s.run(&["x509", "-inform", "DER", "-in", &file, "-noout", "-checkend", &(31 * 86_400).to_string()])
            .status
            .success()
    );
}

fn after_in(text: &str, heading: &str) -> String {
    let mut lines = text.lines().skip_while(|line| !line.contains(heading));
    lines.next();
    lines.next().unwrap_or("").trim().trim_start_matches("keyid:").to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every CSR refusal, with requests made by openssl: RSA-1024 always, RSA-2048 unless the policy allows it,
/// another CN (both names in the message), a corrupted signature, CA:true, a SAN, keyCertSign, serverAuth; and
/// a request for exactly the profile is accepted.
#[test]
fn openssl_csrs_are_refused_for_each_reason_with_a_precise_error() {
    let s = Scratch::new();
    let rsa = KeyPolicy { allow_rsa: true };
    let strict = KeyPolicy::default();

    let rsa1024 = s.csr("rsa1024", "rsa:1024", "/CN=dev", &[]);
    for policy in [&strict, &rsa] {
        let err = check_csr(&rsa1024, "dev", policy).unwrap_err();
        assert!(matches!(&err, CsrError::KeyTypeRefused { refused, .. } if refused == "RSA-1024"), "{err}");
    }
    let rsa2048 = s.csr("rsa2048", "rsa:2048", "/CN=dev", &[]);
    let err = check_csr(&rsa2048, "dev", &strict).unwrap_err();
    assert_eq!(err.to_string(), "the CSR's key type is not allowed: RSA-2048 (allowed: ECDSA P-256, ECDSA P-384)");
    assert_eq!(check_csr(&rsa2048, "dev", &rsa).unwrap().key_type(), zerotouch_pki::DeviceKeyType::Rsa { bits: 2048 });

    let other = s.csr("other", "ec:P-256", "/CN=someone-else", &[]);
    let err = check_csr(&other, "dev", &strict).unwrap_err();
    assert!(matches!(err, CsrError::CommonNameMismatch { .. }));
    assert_eq!(err.to_string(), "the CSR's subject common name \"someone-else\" is not the registration id \"dev\"");

    let twice = s.csr("twice", "ec:P-256", "/CN=dev/CN=dev", &[]);
    let err = check_csr(&twice, "dev", &strict).unwrap_err();
    assert!(matches!(&err, CsrError::CommonNameMismatch { found, .. } if found == "(2 CNs)"), "{err}");
    let mut corrupted = s.csr("good", "ec:P-256", "/CN=dev", &[]);
    let last = corrupted.len() - 1;
    corrupted[last] ^= 0x01;
    assert_eq!(check_csr(&corrupted, "dev", &strict).unwrap_err(), CsrError::BadSignature);
    // A changed subject under the original signature is a bad signature too.
    let good = s.read("good.csr");
    let mut tampered = good.clone();
    let at = tampered.windows(3).position(|w| w == b"dev").unwrap();
    tampered[at..at + 3].copy_from_slice(b"dew");
    assert_eq!(check_csr(&tampered, "dew", &strict).unwrap_err(), CsrError::BadSignature);
    assert!(matches!(check_csr(&good[..good.len() - 3], "dev", &strict), Err(CsrError::Malformed(_))));

    for (ext, named) in [
        ("basicConstraints=critical,CA:TRUE", "basicConstraints CA:true"),
        ("subjectAltName=DNS:dev.example.com", "subjectAltName"),
        ("keyUsage=critical,digitalSignature,keyCertSign", "Key Cert Sign"),
        ("extendedKeyUsage=clientAuth,serverAuth", "serverAuth"),
        ("nsComment=hello", "nsComment"),
    ] {
        let csr = s.csr("ext", "ec:P-256", "/CN=dev", &[ext]);
        let err = check_csr(&csr, "dev", &strict).unwrap_err();
        assert!(matches!(err, CsrError::ExtensionRefused { .. }), "{ext}: {err}");
        assert!(err.to_string().contains(named), "{ext}: {err}");
    }
    let exact = s.csr(
        "exact",
        "ec:P-384",
        "/CN=dev",
        &["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature", "extendedKeyUsage=clientAuth"],
    );
    assert_eq!(check_csr(&exact, "dev", &strict).unwrap().common_name(), "dev");
}

/// openssl parses our CRL, verifies it under the issuing CA, lists the revoked serials and the CRL number, and
/// refuses a revoked device certificate with it while accepting one that is not listed.
#[test]
fn openssl_reads_and_enforces_the_crl() {
    let s = Scratch::new();
    let (_, ca) = development_hierarchy(KeyAlgorithm::EcdsaP384, now()).unwrap();
    let mut issued = Vec::new();
    for name in ["a", "b", "c"] {
        let csr = s.csr(name, "ec:P-256", &format!("/CN={name}"), &[]);
        let checked = check_csr(&csr, name, &KeyPolicy::default()).unwrap();
        issued.push(issue(&ca, &checked, name, &profile(), now()).unwrap());
    }
    let revoked: Vec<Revoked> = [(0, RevocationReason::KeyCompromise), (1, RevocationReason::CessationOfOperation)]
        .iter()
        .map(|(i, reason)| Revoked {
            serial: Serial::from_hex(&issued[*i].serial_hex).unwrap(),
            revoked_at: now(),
            reason: *reason,
        })
        .collect();
    let der = crl(&ca, &revoked, 42, now(), now() + days(1)).unwrap();
    s.write("crl.der", &der);
    s.write("crl.pem", crl_pem(&der));
    s.write("ica.pem", certificate_pem(ca.certificate_der()));
    let text = s.ok(&["crl", "-inform", "DER", "-in", "crl.der", "-text", "-noout"]);
    for entry in &issued[..2] {
        assert!(text.contains(&format!("Serial Number: {}", entry.serial_hex.to_uppercase())), "{text}");
    }
    assert!(!text.contains(&issued[2].serial_hex.to_uppercase()));
    assert!(text.contains("X509v3 CRL Number: \n                42"), "{text}");
    assert!(text.contains("Key Compromise") && text.contains("Cessation Of Operation"), "{text}");
    assert!(text.contains("Signature Algorithm: ecdsa-with-SHA384"), "{text}");
    let out = s.run(&["crl", "-in", "crl.pem", "-CAfile", "ica.pem", "-noout"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("verify OK"), "{out:?}");

    const CRL_CHECK: [&str; 9] =
        ["verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "root.pem", "-untrusted", "ica.pem", "leaf.pem"];
    write_chain(&s, &issued[0].chain_der);
    let out = s.run(&CRL_CHECK);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate revoked"), "{out:?}");
    s.write("leaf.pem", certificate_pem(&issued[2].der));
    assert!(s.ok(&CRL_CHECK).contains("leaf.pem: OK"));
}

/// openssl reads our certs-only PKCS#7 and prints every certificate; our EST base64 decodes with openssl base64.
#[test]
fn openssl_reads_the_est_pkcs7_and_its_base64() {
    let s = Scratch::new();
    let (_, ca) = development_hierarchy(KeyAlgorithm::EcdsaP256, now()).unwrap();
    let csr = s.csr("dev", "ec:P-256", "/CN=dev", &[]);
    let issued = issue(&ca, &check_csr(&csr, "dev", &KeyPolicy::default()).unwrap(), "dev", &profile(), now()).unwrap();
    let p7 = certs_only_pkcs7(&issued.chain_der).unwrap();
    s.write("p7.b64", est_base64(&p7));
    s.ok(&["base64", "-d", "-in", "p7.b64", "-out", "p7.der"]);
    assert_eq!(s.read("p7.der"), p7);
    let out = s.ok(&["pkcs7", "-inform", "DER", "-in", "p7.der", "-print_certs"]);
    for subject in [
        "subject=CN = dev",
        "subject=CN = zerotouch development issuing CA",
        "subject=CN = zerotouch development root CA",
    ] {
        assert!(out.contains(subject), "{subject} missing in {out}");
    }
    assert_eq!(out.matches("-----BEGIN CERTIFICATE-----").count(), 3);
}

/// Our encrypted keys are standard encrypted PKCS#8: openssl decrypts them with the passphrase (and not without),
/// and we load keys openssl encrypted with AES-256-CBC.
#[test]
fn encrypted_keys_are_standard_pkcs8_both_ways() {
    let s = Scratch::new();
    let passphrase = Passphrase::new("s3cret pass").unwrap();
    let public_key = |file: &str| {
        s.ok(&["pkey", "-in", file, "-passin", "pass:s3cret pass", "-pubout", "-outform", "DER", "-out", "pub.der"]);
        s.read("pub.der")
    };
    for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa3072] {
        let key = CaKey::generate(algorithm).unwrap();
        s.write("ours.key", key.to_encrypted_pem(&passphrase).unwrap());
        assert_eq!(public_key("ours.key"), key.public_key_der(), "{algorithm}");
        assert!(!s.run(&["pkey", "-in", "ours.key", "-passin", "pass:wrong", "-noout"]).status.success());
    }
    s.ok(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
        "-aes-256-cbc",
        "-pass",
        "pass:s3cret pass",
        "-out",
        "theirs.key",
    ]);
    let pem = String::from_utf8(s.read("theirs.key")).unwrap();
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let key = CaKey::from_encrypted_pem(&pem, &passphrase).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP384);
    assert_eq!(public_key("theirs.key"), key.public_key_der());
    assert_eq!(
        CaKey::from_encrypted_pem(&pem, &Passphrase::new("wrong").unwrap()).unwrap_err(),
        zerotouch_pki::KeyError::WrongPassphrase
    );
}

/// The production path: our CA CSR, signed by an openssl root, makes an issuing CA whose device certificates
/// openssl verifies; chains that are wrong in any checked way are refused with the matching error.
#[test]
fn an_openssl_root_signs_our_ca_csr_and_the_chain_is_checked() {
    let s = Scratch::new();
    s.root("root", "/CN=Offline Root/O=Example", 3650, "ca");
    let key = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    s.write("ica.csr", ca_csr(&key, "Issuing CA 1").unwrap());
    s.sign_csr("ica.csr", "ica", "root", 365, "ca_pathlen0");
    let chain_pem =
        format!("{}{}", String::from_utf8(s.read("ica.pem")).unwrap(), String::from_utf8(s.read("root.pem")).unwrap());
    let ca = IssuingCa::from_pem_chain(key, &chain_pem, now()).unwrap();

    let csr = s.csr("dev", "ec:P-256", "/CN=dev", &[]);
    let issued = issue(&ca, &check_csr(&csr, "dev", &KeyPolicy::default()).unwrap(), "dev", &profile(), now()).unwrap();
    write_chain(&s, &issued.chain_der);
    assert!(s.ok(&["verify", "-CAfile", "root.pem", "-untrusted", "ica.pem", "leaf.pem"]).contains("OK"));
    // openssl computed the ICA's SKI (SHA-1); our device certificate's AKI is that value.
    let ski = after_in(&s.text(&s.der("ica")), "X509v3 Subject Key Identifier");
    assert_eq!(hex(ca.key_identifier()), ski.replace(':', "").to_lowercase());
    let crl_der = crl(&ca, &[], 1, now(), now() + days(1)).unwrap();
    s.write("ica-crl.der", &crl_der);
    let out = s.run(&["crl", "-inform", "DER", "-in", "ica-crl.der", "-CAfile", "ica.pem", "-noout"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("verify OK"));

    let (ica, root) = (s.der("ica"), s.der("root"));
    let fresh = || CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let reload = || {
        CaKey::from_encrypted_pem(
            &ca.key().to_encrypted_pem(&Passphrase::new("p").unwrap()).unwrap(),
            &Passphrase::new("p").unwrap(),
        )
        .unwrap()
    };

    assert!(matches!(IssuingCa::new(fresh(), &[ica.clone(), root.clone()], now()), Err(CaError::KeyMismatch { .. })));
    assert!(matches!(IssuingCa::new(reload(), std::slice::from_ref(&ica), now()), Err(CaError::NoRoot { .. })));
    assert!(matches!(IssuingCa::new(reload(), &[], now()), Err(CaError::EmptyChain)));
    let err = IssuingCa::new(reload(), &[ica.clone(), root.clone()], now() + days(400)).unwrap_err();
    assert!(
        matches!(&err, CaError::Chain(ChainError::Expired { certificate, .. }) if certificate.contains("issuing CA")),
        "{err}"
    );

    // The same CSR signed by another root that happens to have the same name: the signature does not verify.
    s.root("root2", "/CN=Offline Root/O=Example", 3650, "ca");
    let err = IssuingCa::new(reload(), &[ica.clone(), s.der("root2")], now()).unwrap_err();
    assert!(matches!(err, CaError::Chain(ChainError::BadSignature { .. })), "{err}");
    // A root of another name: out of order.
    s.root("root3", "/CN=Other Root", 3650, "ca");
    assert!(matches!(IssuingCa::new(reload(), &[ica, s.der("root3")], now()), Err(CaError::OutOfOrder { .. })));

    for (section, check) in [
        ("not_ca", "not a CA certificate"),
        ("ca_no_certsign", "lacks keyCertSign"),
        ("ca_no_crlsign", "lacks cRLSign"),
    ] {
        s.sign_csr("ica.csr", "bad", "root", 365, section);
        let err = IssuingCa::new(reload(), &[s.der("bad"), root.clone()], now()).unwrap_err();
        assert!(err.to_string().contains(check), "{section}: {err}");
    }
}

/// verify_chain against chains openssl made: accepted to the root or to the intermediate as anchor, and refused
/// for each reason with the certificate named; openssl agrees on the refusals it can judge.
#[test]
fn verify_chain_judges_openssl_made_chains() {
    let s = Scratch::new();
    s.root("root", "/CN=Customer Root", 3650, "ca");
    s.signed("int", "/CN=Customer Intermediate", "root", 1000, "ca");
    s.signed("leaf", "/CN=factory-device-7", "int", 365, "device");
    let (root, int, leaf) = (s.der("root"), s.der("int"), s.der("leaf"));
    let only_int = vec![int.clone()];

    let verified = verify_chain(&leaf, &only_int, &root, now()).unwrap();
    assert_eq!(verified.path, vec![leaf.clone(), int.clone(), root.clone()]);
    let to_int = verify_chain(&leaf, &[int.clone(), root.clone()], &int, now()).unwrap();
    assert_eq!(to_int.path, vec![leaf.clone(), int.clone()]);
    assert_eq!(zerotouch_pki::subject_cn(&leaf).unwrap(), "factory-device-7");

    // Missing intermediate, or another CA as anchor: unknown CA.
    assert!(matches!(verify_chain(&leaf, &[], &root, now()), Err(ChainError::UnknownCa { .. })));
    s.root("other", "/CN=Someone Else", 3650, "ca");
    let err = verify_chain(&leaf, &only_int, &s.der("other"), now()).unwrap_err();
    assert!(matches!(err, ChainError::UnknownCa { .. }), "{err}");
    // An anchor with the right name but another key: bad signature (a presented copy is never trusted).
    s.root("impostor", "/CN=Customer Root", 3650, "ca");
    let err = verify_chain(&leaf, &[int, root.clone()], &s.der("impostor"), now()).unwrap_err();
    assert!(matches!(err, ChainError::BadSignature { .. }), "{err}");

    // Time: expired and not yet valid, naming the certificate; openssl -attime agrees.
    let later = now() + days(400);
    let err = verify_chain(&leaf, &only_int, &root, later).unwrap_err();
    assert!(
        matches!(&err, ChainError::Expired { certificate, .. } if certificate.contains("device certificate")),
        "{err}"
    );
    let at = later.unix_timestamp().to_string();
    let out = s.run(&["verify", "-attime", &at, "-CAfile", "root.pem", "-untrusted", "int.pem", "leaf.pem"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate has expired"), "{out:?}");
    let err = verify_chain(&leaf, &only_int, &root, now() - days(2)).unwrap_err();
    assert!(matches!(err, ChainError::NotYetValid { .. }), "{err}");
    s.signed("short", "/CN=Short-lived Intermediate", "root", 10, "ca");
    s.signed("leaf2", "/CN=dev2", "short", 365, "device");
    let err = verify_chain(&s.der("leaf2"), &[s.der("short")], &root, now() + days(20)).unwrap_err();
    assert!(matches!(&err, ChainError::Expired { certificate, .. } if certificate.contains("Short-lived")), "{err}");

    // CA flags along the path.
    for (section, expected) in [("not_ca", "not a CA certificate"), ("ca_no_certsign", "lacks keyCertSign")] {
        s.signed("badint", "/CN=Bad Intermediate", "root", 100, section);
        s.signed("leaf3", "/CN=dev3", "badint", 30, "device");
        let err = verify_chain(&s.der("leaf3"), &[s.der("badint")], &root, now()).unwrap_err();
        assert!(err.to_string().contains(expected) && err.to_string().contains("Bad Intermediate"), "{err}");
        let out = s.run(&["verify", "-CAfile", "root.pem", "-untrusted", "badint.pem", "leaf3.pem"]);
        assert!(!out.status.success(), "openssl accepted {section}");
    }
    // pathLen: a root limited to zero intermediates cannot have one.
    s.root("tight", "/CN=Tight Root", 3650, "ca_pathlen0");
    s.signed("int4", "/CN=Int Under Tight", "tight", 100, "ca");
    s.signed("int5", "/CN=Second Int", "int4", 100, "ca");
    s.signed("leaf4", "/CN=dev4", "int5", 30, "device");
    let err = verify_chain(&s.der("leaf4"), &[s.der("int5"), s.der("int4")], &s.der("tight"), now()).unwrap_err();
    assert!(matches!(err, ChainError::PathLenExceeded { path_len: 0, below: 2, .. }), "{err}");
    let out =
        s.run(&["verify", "-CAfile", "tight.pem", "-untrusted", "int4.pem", "-untrusted", "int5.pem", "leaf4.pem"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("path length constraint exceeded"), "{out:?}");
    // The leaf must be a device certificate for TLS clients.
    s.signed("caleaf", "/CN=dev5", "int", 30, "ca");
    assert!(matches!(verify_chain(&s.der("caleaf"), &only_int, &root, now()), Err(ChainError::LeafIsCa { .. })));
    s.signed("server", "/CN=dev6", "int", 30, "server_only");
    let err = verify_chain(&s.der("server"), &only_int, &root, now()).unwrap_err();
    assert!(matches!(err, ChainError::NotForClientAuth { .. }), "{err}");
    // Garbage in the presented list is an error naming it, not a panic.
    let err = verify_chain(&leaf, &[vec![0x30, 0x03, 0x02, 0x01]], &root, now()).unwrap_err();
    assert!(
        matches!(&err, ChainError::Malformed { certificate, .. } if certificate == "presented certificate 1"),
        "{err}"
    );
}

/// Proof of possession with openssl: a certificate with CN = the code signed by the CA's key verifies; another
/// CN or another signer does not.
#[test]
fn proof_of_possession_with_an_openssl_signed_verification_certificate() {
    let s = Scratch::new();
    s.root("ca", "/CN=Uploaded CA", 3650, "ca");
    let code = verification_code();
    assert_eq!(code.len(), 32);
    assert!(code.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(code, verification_code());
    s.signed("proof", &format!("/CN={code}"), "ca", 1, "plain");
    verify_proof_of_possession(&s.der("ca"), &s.der("proof"), &code).unwrap();

    let err = verify_proof_of_possession(&s.der("ca"), &s.der("proof"), &verification_code()).unwrap_err();
    assert!(matches!(err, ProofError::WrongCode(_)), "{err}");
    s.root("other", "/CN=Uploaded CA", 3650, "ca");
    s.signed("forged", &format!("/CN={code}"), "other", 1, "plain");
    assert_eq!(
        verify_proof_of_possession(&s.der("ca"), &s.der("forged"), &code).unwrap_err(),
        ProofError::NotSignedByCa
    );
    assert!(matches!(verify_proof_of_possession(b"junk", &s.der("proof"), &code), Err(ProofError::MalformedCa(_))));
}
