//! Path building over many anchors, checked against the search it replaced (each anchor tried on its own, kept
//! here as the reference model with a signature counter), and the bounds: the signature budget, the key size,
//! key identifiers.

use rcgen::{CertificateParams, DnType, Issuer, KeyPair, PublicKeyData, SignatureAlgorithm};

use super::*;
use crate::chain::names_issuer;
use crate::test_certificates::{at, ca_params, ladder, leaf};

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A CA: its DER and its issuer.
struct Ca {
    der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn root(cn: &str, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = ca_params(cn);
    edit(&mut params);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Ca { der, issuer: Issuer::new(params, key) }
}

fn intermediate(cn: &str, parent: &Ca, edit: impl FnOnce(&mut CertificateParams)) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = ca_params(cn);
    edit(&mut params);
    let der = params.signed_by(&key, &parent.issuer).unwrap().der().to_vec();
    Ca { der, issuer: Issuer::new(params, key) }
}

fn device(parent: &Ca, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "device");
    edit(&mut params);
    params.signed_by(&KeyPair::generate().unwrap(), &parent.issuer).unwrap().der().to_vec()
}

fn anchors_of(list: &[(&[u8], bool)]) -> TrustAnchors {
    let mut anchors = TrustAnchors::new();
    for (der, usable) in list {
        anchors.push(der, *usable);
    }
    anchors
}

// ---------------------------------------------------------------------------------------------------------------
// The reference model: the search before this module, one anchor at a time (`chain::verify_path` and the server's
// `match_group` as they were), counting the signatures it checks.

fn reference_one(
    leaf: &[u8],
    presented_ders: &[Vec<u8>],
    anchor: &[u8],
    now: OffsetDateTime,
    checks: &mut usize,
) -> Result<VerifiedChain, ChainError> {
    let leaf_cert = parse_as(leaf, "the device certificate".to_owned())?;
    let anchor_cert = parse_as(anchor, "the trusted CA certificate".to_owned())?;
    let presented = presented_ders
        .iter()
        .enumerate()
        .map(|(i, der)| parse_as(der, format!("presented certificate {}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf_name = describe(Role::Device, &leaf_cert);
    check_leaf(&leaf_cert, &leaf_name, Purpose::ClientAuth, now)?;
    let anchor_name = describe(Role::Anchor, &anchor_cert);
    let mut signed = |child: &X509Certificate<'_>, child_name: &str, parent: &X509Certificate<'_>, name: &str| {
        *checks += 1;
        crate::chain::check_signed_by(child, child_name, parent, name)
    };
    let mut path: Vec<usize> = Vec::new();
    loop {
        if path.len() + 2 > MAX_CHAIN_LENGTH {
            return Err(ChainError::TooLong);
        }
        let (current, current_name) = match path.last() {
            None => (&leaf_cert, leaf_name.clone()),
            Some(&i) => (&presented[i], describe(Role::Presented, &presented[i])),
        };
        if names_issuer(current, &anchor_cert) {
            signed(current, &current_name, &anchor_cert, &anchor_name)?;
            break;
        }
        let candidates: Vec<usize> =
            (0..presented.len()).filter(|i| !path.contains(i) && names_issuer(current, &presented[*i])).collect();
        let mut first_error = None;
        let mut found = None;
        for i in candidates {
            match signed(current, &current_name, &presented[i], &describe(Role::Presented, &presented[i])) {
                Ok(()) => {
                    found = Some(i);
                    break;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (found, first_error) {
            (Some(i), _) => path.push(i),
            (None, Some(error)) => return Err(error),
            (None, None) => {
                return Err(ChainError::UnknownCa { certificate: current_name, issuer: current.issuer().to_string() });
            }
        }
    }
    for (below, &i) in path.iter().enumerate() {
        let name = describe(Role::Presented, &presented[i]);
        check_critical_extensions(&presented[i], &name)?;
        check_ca(&presented[i], &name, below)?;
        check_validity(&presented[i], &name, now)?;
    }
    check_critical_extensions(&anchor_cert, &anchor_name)?;
    check_ca(&anchor_cert, &anchor_name, path.len())?;
    check_validity(&anchor_cert, &anchor_name, now)?;
    let mut ders = vec![leaf.to_vec()];
    ders.extend(path.iter().map(|&i| presented_ders[i].clone()));
    ders.push(anchor.to_vec());
    Ok(VerifiedChain { path: ders, leaf_not_after: time_of(leaf_cert.validity().not_after) })
}

/// The server's `match_group` before: every anchor in turn; the nearest usable one wins.
fn reference(leaf: &[u8], presented: &[Vec<u8>], list: &[(&[u8], bool)], now: OffsetDateTime) -> Judgement {
    let mut checks = 0;
    let mut best: Option<(usize, usize, VerifiedChain)> = None;
    let mut unverified = false;
    let mut first_error = None;
    for (entry, (der, usable)) in list.iter().enumerate() {
        match reference_one(leaf, presented, der, now, &mut checks) {
            Ok(chain) if *usable => {
                if best.as_ref().is_none_or(|(depth, _, _)| chain.path.len() < *depth) {
                    best = Some((chain.path.len(), entry, chain));
                }
            }
            Ok(_) => unverified = true,
            Err(ChainError::UnknownCa { .. }) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let outcome = match (best, first_error, unverified) {
        (Some((_, entry, chain)), _, _) => Ok(Choice { entry, chain }),
        (None, Some(e), _) => Err(Refusal::Chain(e)),
        (None, None, true) => Err(Refusal::NotVerified),
        (None, None, false) => Err(Refusal::NoAnchor),
    };
    Judgement { outcome, signature_checks: checks }
}

fn judge(leaf: &[u8], presented: &[Vec<u8>], list: &[(&[u8], bool)], now: OffsetDateTime) -> Judgement {
    choose_anchor(leaf, presented, &anchors_of(list), now, Purpose::ClientAuth)
}

// ---------------------------------------------------------------------------------------------------------------

/// Every combination of anchors (in several orders, usable or not) and presented certificates (in any order,
/// with extras and same-named impostors) gets the answer the per-anchor search gave, with no more signature
/// checks. The certificates carry subject key identifiers but no authority key identifiers (rcgen's default), so
/// the names alone link them, as in the reference.
#[test]
fn one_pass_answers_as_each_anchor_in_turn_did() {
    let root_ca = root("Fleet Root", |_| {});
    let int = intermediate("Fleet Issuing", &root_ca, |_| {});
    let leaf = device(&int, |_| {});
    let impostor_root = root("Fleet Root", |_| {});
    let impostor_int = intermediate("Fleet Issuing", &impostor_root, |_| {});
    let other = root("Other Root", |_| {});
    let expired_int = intermediate("Fleet Issuing", &root_ca, |p| {
        p.not_before = at(1_600_000_000);
        p.not_after = at(1_650_000_000);
    });
    let leaf_expired = device(&int, |p| {
        p.not_before = at(1_600_000_000);
        p.not_after = at(1_650_000_000);
    });
    let pool: Vec<(&str, &[u8])> = vec![
        ("root", &root_ca.der),
        ("int", &int.der),
        ("impostor-root", &impostor_root.der),
        ("impostor-int", &impostor_int.der),
        ("other", &other.der),
        ("expired-int", &expired_int.der),
        ("garbage", &[0x30, 0x03, 0x02, 0x01, 0x00]),
    ];
    let anchor_lists: Vec<Vec<(usize, bool)>> = vec![
        vec![],
        vec![(0, true)],
        vec![(1, true)],
        vec![(0, true), (1, true)],
        vec![(1, true), (0, true)],
        vec![(1, false), (0, true)],
        vec![(1, false)],
        vec![(2, true), (0, true)],
        vec![(2, true)],
        vec![(3, true), (4, true)],
        vec![(4, true), (0, false), (5, true)],
        vec![(5, true)],
        vec![(6, true), (0, true)],
        vec![(0, true), (0, false), (1, true), (1, true)],
    ];
    let presented_lists: Vec<Vec<usize>> =
        vec![vec![], vec![1], vec![1, 0], vec![0, 1], vec![3, 1], vec![5, 1], vec![3, 5, 1, 0], vec![4, 6], vec![2, 3]];
    let mut compared = 0;
    for leaf in [&leaf, &leaf_expired] {
        for anchors in &anchor_lists {
            let list: Vec<(&[u8], bool)> = anchors.iter().map(|&(i, usable)| (pool[i].1, usable)).collect();
            for presented in &presented_lists {
                let presented: Vec<Vec<u8>> = presented.iter().map(|&i| pool[i].1.to_vec()).collect();
                let old = reference(leaf, &presented, &list, now());
                let new = judge(leaf, &presented, &list, now());
                let names: Vec<&str> = anchors.iter().map(|&(i, _)| pool[i].0).collect();
                assert_eq!(new.outcome, old.outcome, "anchors {names:?}, {} presented", presented.len());
                assert!(new.signature_checks <= old.signature_checks, "{names:?}: {new:?} vs {old:?}");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 2 * 14 * 9);
}

/// The nearest usable anchor wins even when a farther one is listed first; the walk stops there, so the root is
/// never checked; the same CA listed by several groups costs one signature.
#[test]
fn the_nearest_anchor_wins_and_costs_one_check_per_link() {
    let root_ca = root("Fleet Root", |_| {});
    let int = intermediate("Fleet Issuing", &root_ca, |_| {});
    let leaf = device(&int, |_| {});
    let presented = vec![int.der.clone(), root_ca.der.clone()];
    let list: Vec<(&[u8], bool)> = vec![(&root_ca.der, true), (&int.der, true), (&int.der, true), (&int.der, true)];
    let judged = judge(&leaf, &presented, &list, now());
    let choice = judged.outcome.unwrap();
    assert_eq!(choice.entry, 1);
    assert_eq!(choice.chain.path, [leaf.as_slice(), int.der.as_slice()]);
    assert_eq!(judged.signature_checks, 1);
    // The old search checked 2 signatures for the root, then 1 for each listing of the intermediate.
    assert_eq!(reference(&leaf, &presented, &list, now()).signature_checks, 5);
    // To the root alone: one check per link.
    let judged = judge(&leaf, &presented, &[(&root_ca.der, true)], now());
    assert_eq!(judged.outcome.unwrap().chain.path.len(), 3);
    assert_eq!(judged.signature_checks, 2);
}

/// The attack chain: seven presented CA certificates that all bear the name of an enrolled CA (and name it as
/// their issuer), without key identifiers, each signed by the key of the next, ordered so that at every level the
/// one that verifies is tried last (rcgen writes no authority key identifier: the names alone link them).
fn attack_chain(named_like: &str) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut cas: Vec<Ca> = vec![root(named_like, |_| {})];
    for _ in 0..7 {
        let next = intermediate(named_like, cas.last().unwrap(), |_| {});
        cas.push(next);
    }
    let leaf = device(cas.last().unwrap(), |_| {});
    // cas[1..=7]: cas[7] signed the leaf, cas[k] signed cas[k+1]; presented in that order, the verifying one is last.
    let presented = cas[1..].iter().map(|ca| ca.der.clone()).collect();
    (leaf, presented)
}

/// The attack of issue 16 point 6, counted: against four groups' CAs (one of them of the colliding name), the
/// per-anchor search checked 1 + 3 x 28 = 85 signatures; the one pass refuses the chain at the 17th check, with
/// `TooManySignatureChecks`, having checked 16.
#[test]
fn a_chain_that_needs_too_many_signature_checks_is_refused_at_the_cap() {
    let fleet: Vec<Ca> = (1..=4).map(|i| root(&format!("Fleet CA {i}"), |_| {})).collect();
    let (leaf, presented) = attack_chain("Fleet CA 1");
    let list: Vec<(&[u8], bool)> = fleet.iter().map(|ca| (ca.der.as_slice(), true)).collect();
    let old = reference(&leaf, &presented, &list, now());
    assert_eq!(old.signature_checks, 1 + 3 * 28);
    let new = judge(&leaf, &presented, &list, now());
    assert_eq!(new.outcome, Err(Refusal::Chain(ChainError::TooManySignatureChecks)));
    assert_eq!(new.signature_checks, MAX_SIGNATURE_CHECKS);
    let message = ChainError::TooManySignatureChecks.to_string();
    assert!(message.contains("more than 16 signature checks"), "{message}");
    // The same against a single anchor (verify_chain): refused alike.
    let err = verify_chain(&leaf, &presented, &fleet[1].der, now()).unwrap_err();
    assert_eq!(err, ChainError::TooManySignatureChecks);
}

/// A legitimate chain as long as allowed, with a stray same-named certificate tried first at every level, stays
/// within the budget.
#[test]
fn the_longest_legitimate_chain_fits_the_budget() {
    let mut cas = vec![root("Root", |_| {})];
    for i in 0..MAX_CHAIN_LENGTH - 2 {
        let next = intermediate(&format!("Int {i}"), cas.last().unwrap(), |_| {});
        cas.push(next);
    }
    let leaf = device(cas.last().unwrap(), |_| {});
    let mut presented: Vec<Vec<u8>> = Vec::new();
    for ca in cas[1..].iter().rev() {
        // A certificate of the same name under another key, before the right one.
        let name = crate::certificate::subject_text(&crate::certificate::parse(&ca.der).unwrap());
        presented.push(root(name.trim_start_matches("CN="), |_| {}).der);
        presented.push(ca.der.clone());
    }
    let judged = judge(&leaf, &presented, &[(&cas[0].der, true)], now());
    assert_eq!(judged.outcome.unwrap().chain.path.len(), MAX_CHAIN_LENGTH);
    assert_eq!(judged.signature_checks, 2 * (MAX_CHAIN_LENGTH - 2) + 1);
    assert!(judged.signature_checks <= MAX_SIGNATURE_CHECKS);
}

/// A public key of any bytes, under any algorithm (the certificate's issuer signs it; nobody needs its private key).
struct RawKey {
    bytes: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for RawKey {
    fn der_bytes(&self) -> &[u8] {
        &self.bytes
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// An RSA public key (PKCS#1 DER) with a modulus of `bits` bits and exponent 65537.
fn rsa_key_bytes(bits: usize) -> Vec<u8> {
    let mut modulus = vec![0x00, 0xC5];
    modulus.extend(std::iter::repeat_n(0x5A, bits / 8 - 1));
    let integer = |content: &[u8]| {
        let mut out = vec![0x02, 0x82];
        out.extend(u16::try_from(content.len()).unwrap().to_be_bytes());
        out.extend(content);
        out
    };
    let mut body = integer(&modulus);
    body.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
    let mut out = vec![0x30, 0x82];
    out.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend(body);
    out
}

/// A CA named `cn`, signed by `parent`, whose key is `key`.
fn ca_with_key(cn: &str, parent: &Ca, key: &RawKey) -> Vec<u8> {
    ca_params(cn).signed_by(key, &parent.issuer).unwrap().der().to_vec()
}

/// A presented certificate with an RSA key over 4096 bits is refused before any signature is checked, whether or
/// not the path needs it, and whatever algorithm the certificate claims for the key (the verifier would read
/// the key bytes as RSA for an RSA signature). RSA-4096 is accepted.
#[test]
fn presented_rsa_keys_over_4096_bits_are_refused_before_any_signature_check() {
    let root_ca = root("Fleet Root", |_| {});
    let int = intermediate("Fleet Issuing", &root_ca, |_| {});
    let leaf = device(&int, |_| {});
    let list: Vec<(&[u8], bool)> = vec![(&root_ca.der, true), (&int.der, true)];
    for (alg, what) in [(&rcgen::PKCS_RSA_SHA256, "RSA"), (&rcgen::PKCS_ECDSA_P256_SHA256, "disguised as EC")] {
        let big = RawKey { bytes: rsa_key_bytes(8192), alg };
        let stray = ca_with_key("Fleet Root", &root_ca, &big);
        let judged = judge(&leaf, &[int.der.clone(), stray], &list, now());
        assert_eq!(judged.signature_checks, 0, "{what}");
        match judged.outcome {
            Err(Refusal::Chain(ChainError::KeyTooLarge { certificate, bits: 8192 })) => {
                assert!(certificate.contains("Fleet Root"), "{certificate}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let message = ChainError::KeyTooLarge { certificate: "x".into(), bits: 8192 }.to_string();
    assert!(message.contains("RSA-8192") && message.contains("4096"), "{message}");
    // RSA-4096 passes the size check (its signature is then checked as usual, here without success).
    let fair = RawKey { bytes: rsa_key_bytes(4096), alg: &rcgen::PKCS_RSA_SHA256 };
    let stray = ca_with_key("Fleet Issuing", &root_ca, &fair);
    let judged = judge(&leaf, &[stray, int.der], &[(&root_ca.der, true)], now());
    assert_eq!(judged.outcome.unwrap().chain.path.len(), 3);
    // The device certificate's own key is not held to it: it checks no signature here.
    assert_eq!(check_key_size(&crate::certificate::parse(&leaf).unwrap(), "leaf"), Ok(()));
}

/// With authority and subject key identifiers, a same-named certificate under another key is passed over without
/// a signature check, and an anchor of the right name but another key identifier is refused as a bad signature
/// without one.
#[test]
fn key_identifiers_pick_the_issuer_without_signature_checks() {
    let with_aki = |p: &mut CertificateParams| p.use_authority_key_identifier_extension = true;
    let root_ca = root("Fleet Root", |_| {});
    let int = intermediate("Fleet Issuing", &root_ca, with_aki);
    let leaf = device(&int, with_aki);
    let decoys: Vec<Vec<u8>> = (0..5).map(|_| intermediate("Fleet Issuing", &root_ca, with_aki).der).collect();
    let mut presented = decoys;
    presented.push(int.der.clone());
    let judged = judge(&leaf, &presented, &[(&root_ca.der, true)], now());
    assert_eq!(judged.outcome.unwrap().chain.path, vec![leaf.clone(), int.der.clone(), root_ca.der.clone()]);
    assert_eq!(judged.signature_checks, 2);
    assert_eq!(reference(&leaf, &presented, &[(&root_ca.der, true)], now()).signature_checks, 7);

    let impostor = root("Fleet Root", |_| {});
    let judged = judge(&leaf, std::slice::from_ref(&int.der), &[(&impostor.der, true)], now());
    assert_eq!(judged.signature_checks, 1, "only the leaf's link to the intermediate");
    match judged.outcome {
        Err(Refusal::Chain(e @ ChainError::BadSignature { by_key_id: true, .. })) => {
            assert!(e.to_string().contains("authority key identifier"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

/// TPM groups: anchors may complete a path to another anchor (a group lists a root and its intermediates
/// alike), and a chain that leads only to unusable anchors says so.
#[test]
fn anchors_complete_paths_when_asked() {
    let root_ca = root("Maker Root", |_| {});
    let int = intermediate("Maker Issuing", &root_ca, |_| {});
    let ek = device(&int, |_| {});
    let mut plain = TrustAnchors::new();
    plain.push(&root_ca.der, true);
    plain.push(&int.der, false);
    let judged = choose_anchor(&ek, &[], &plain, now(), Purpose::ClientAuth);
    assert_eq!(judged.outcome, Err(Refusal::NotVerified));
    let mut completing = TrustAnchors::new().completing_paths();
    completing.push(&root_ca.der, true);
    completing.push(&int.der, false);
    let judged = choose_anchor(&ek, &[], &completing, now(), Purpose::ClientAuth);
    let choice = judged.outcome.unwrap();
    assert_eq!((choice.entry, choice.chain.path.len()), (0, 3));
    assert_eq!(judged.signature_checks, 2, "the EK's link to the intermediate is checked once");
    assert!(
        choose_anchor(&ek, &[], &TrustAnchors::new(), now(), Purpose::ClientAuth).outcome == Err(Refusal::NoAnchor)
    );
}

// ---------------------------------------------------------------------------------------------------------------
// verify_chain and verify_endorsement_chain: the search with one anchor

/// EK certificates are judged for endorsement: tcg-kp-EKCertificate (2.23.133.8.1) passes, and such a
/// certificate cannot pass as a device (client authentication) certificate; a clientAuth certificate cannot
/// pass as an EK certificate. No extended key usage means unrestricted, for both.
#[test]
fn endorsement_and_client_auth_purposes_are_kept_apart() {
    use rcgen::ExtendedKeyUsagePurpose;
    let now = at(1_750_000_000);
    let (ders, issuer) = ladder(1, |_| {});
    let with_eku = |purpose: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::default();
        params.extended_key_usages = vec![purpose];
        params.signed_by(&KeyPair::generate().unwrap(), &issuer).unwrap().der().to_vec()
    };
    let ek = with_eku(ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1]));
    let presented = vec![ders[1].clone()];
    assert!(verify_endorsement_chain(&ek, &presented, &ders[0], now).is_ok());
    assert!(matches!(verify_chain(&ek, &presented, &ders[0], now), Err(ChainError::NotForClientAuth { .. })));
    let client = with_eku(ExtendedKeyUsagePurpose::ClientAuth);
    assert!(matches!(
        verify_endorsement_chain(&client, &presented, &ders[0], now),
        Err(ChainError::NotForEndorsement { .. })
    ));
    assert!(verify_endorsement_chain(&leaf(&issuer), &presented, &ders[0], now).is_ok());
}

#[test]
fn paths_longer_than_the_limit_are_refused() {
    let now = at(1_750_000_000);
    let (ders, issuer) = ladder(MAX_CHAIN_LENGTH - 1, |_| {});
    let presented: Vec<Vec<u8>> = ders[1..].iter().rev().cloned().collect();
    assert_eq!(verify_chain(&leaf(&issuer), &presented, &ders[0], now).unwrap_err(), ChainError::TooLong);
    let (ders, issuer) = ladder(MAX_CHAIN_LENGTH - 2, |_| {});
    let presented: Vec<Vec<u8>> = ders[1..].to_vec();
    let verified = verify_chain(&leaf(&issuer), &presented, &ders[0], now).unwrap();
    assert_eq!(verified.path.len(), MAX_CHAIN_LENGTH);
}

#[test]
fn unknown_critical_extensions_are_refused_by_name() {
    let now = at(1_750_000_000);
    let (ders, issuer) = ladder(1, |params| {
        let mut ext = rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4, 5], vec![0x05, 0x00]);
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
    });
    let err = verify_chain(&leaf(&issuer), &ders[1..], &ders[0], now).unwrap_err();
    assert_eq!(
        err,
        ChainError::UnsupportedCriticalExtension {
            certificate: "the presented intermediate certificate \"CN=int 0\"".to_owned(),
            extension: "1.2.3.4.5".to_owned()
        }
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let mut anchors = TrustAnchors::new().completing_paths();
        anchors.push(&bytes, true);
        let _ = choose_anchor(&bytes, std::slice::from_ref(&bytes), &anchors, at(1_750_000_000), Purpose::Endorsement);
        let _ = verify_chain(&bytes, std::slice::from_ref(&bytes), &bytes, at(1_750_000_000));
    }
}

/// A chain's validity is the window in which every certificate of its path is valid: the latest start and the
/// earliest end, whichever certificates they belong to (here the intermediate ends first, the device starts last).
#[test]
fn a_verified_chain_is_valid_while_every_certificate_of_its_path_is() {
    let root_ca = root("Window Root", |p| {
        p.not_before = at(1_700_000_000);
        p.not_after = at(1_900_000_000);
    });
    let int = intermediate("Window Issuing", &root_ca, |p| {
        p.not_before = at(1_710_000_000);
        p.not_after = at(1_850_000_000);
    });
    let leaf = device(&int, |p| {
        p.not_before = at(1_720_000_000);
        p.not_after = at(1_880_000_000);
    });
    let judged = judge(&leaf, std::slice::from_ref(&int.der), &[(&root_ca.der, true)], at(1_800_000_000));
    let chain = judged.outcome.unwrap().chain;
    assert_eq!(chain.path.len(), 3);
    assert_eq!(chain.validity(), Some((at(1_720_000_000), at(1_850_000_000))));
    let broken = VerifiedChain { path: vec![leaf, b"not a certificate".to_vec()], ..chain };
    assert_eq!(broken.validity(), None);
}
