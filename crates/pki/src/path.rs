//! Path building from a device's chain to whichever trust anchor it leads to, over every anchor of every
//! enrollment group in one pass (X.509 attestation and TPM groups, `docs/protocol/device-api.md` §4).
//!
//! The chain arrives before the device is authenticated, so everything here is paid by whoever connects. One pass
//! walks up from the device certificate once, whatever the number of anchors:
//! - at each certificate, the anchors whose subject is its issuer (an index by subject, built once per set of
//!   anchors, [`TrustAnchors`]) are tried first; an anchor named as issuer ends that anchor's path there, as it did
//!   when each anchor was tried on its own ("the anchor wins whenever it is named");
//! - otherwise the next certificate is the first presented one whose subject is that issuer and whose signature
//!   verifies;
//! - a candidate issuer whose subject key identifier differs from the certificate's authority key identifier is
//!   refused without checking the signature (as OpenSSL does); without both identifiers the names alone link;
//! - the walk stops as soon as an anchor in use verified, since no anchor further from the device can win;
//! - a signature is checked at most once per (certificate, issuer key), and at most [`MAX_SIGNATURE_CHECKS`]
//!   times per chain: a chain that needs more is refused ([`ChainError::TooManySignatureChecks`]);
//! - before any signature is checked, a presented certificate with an RSA key over [`MAX_RSA_BITS`] is refused
//!   ([`ChainError::KeyTooLarge`]), and no signature is ever checked under such a presented key.
//!
//! The result is the one trying each anchor in turn gave (the nearest usable anchor to the device wins, then the
//! first error met in the anchors' order, then an unverified anchor, then "no anchor"): the tests below hold the
//! per-anchor search as a reference model and compare both.

use std::cell::OnceCell;
use std::collections::HashMap;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;

use crate::certificate::modulus_bits;
use crate::certificate::time_of;
use crate::chain::{
    ChainError, MAX_CHAIN_LENGTH, Purpose, Role, VerifiedChain, accepted_signature_algorithm, check_ca,
    check_critical_extensions, check_leaf, check_validity, describe, parse_as,
};
pub use crate::chain::{MAX_RSA_BITS, MAX_SIGNATURE_CHECKS};

/// Trust anchors (enrolled CA certificates), in the order their enrollments list them, parsed and indexed by
/// subject once. The same certificate listed twice is one anchor with two entries.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    entries: Vec<Entry>,
    certs: Vec<AnchorCert>,
    by_der: HashMap<[u8; 32], usize>,
    by_subject: HashMap<Vec<u8>, Vec<usize>>,
    complete_paths: bool,
}

/// One listing of an anchor.
#[derive(Debug, Clone, Copy)]
struct Entry {
    cert: usize,
    usable: bool,
}

/// A distinct anchor certificate.
#[derive(Debug, Clone)]
struct AnchorCert {
    der: Vec<u8>,
    /// Why it does not parse, if it does not.
    malformed: Option<ChainError>,
    /// Whether some entry may use it.
    usable: bool,
}

impl TrustAnchors {
    /// No anchors.
    pub fn new() -> Self {
        Self::default()
    }

    /// Anchors that may also stand between the device certificate and another anchor (a TPM group lists a
    /// manufacturer's root and intermediates alike, and the device sends only its EK certificate).
    pub fn completing_paths(mut self) -> Self {
        self.complete_paths = true;
        self
    }

    /// Adds an anchor; `usable` is false for an anchor a chain may lead to but not be accepted by (an uploaded CA
    /// whose proof of possession is not done). Returns the entry's index, which [`Choice::entry`] gives back.
    pub fn push(&mut self, der: &[u8], usable: bool) -> usize {
        let digest = crate::certificate::sha256(der);
        let cert = match self.by_der.get(&digest) {
            Some(&cert) => cert,
            None => {
                let cert = self.certs.len();
                let malformed = match parse_as(der, "the trusted CA certificate".to_owned()) {
                    Ok(parsed) => {
                        self.by_subject.entry(parsed.subject().as_raw().to_vec()).or_default().push(cert);
                        None
                    }
                    Err(e) => Some(e),
                };
                self.certs.push(AnchorCert { der: der.to_vec(), malformed, usable: false });
                self.by_der.insert(digest, cert);
                cert
            }
        };
        if let Some(c) = self.certs.get_mut(cert) {
            c.usable |= usable;
        }
        self.entries.push(Entry { cert, usable });
        self.entries.len() - 1
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The anchor a chain was accepted by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The entry ([`TrustAnchors::push`]'s index) of the nearest usable anchor, the first listed among equals.
    pub entry: usize,
    /// The path to it.
    pub chain: VerifiedChain,
}

/// Why no anchor accepted a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The chain is wrong: the first error met, in the anchors' order (or one that ends the search for all).
    Chain(ChainError),
    /// The chain leads only to anchors that are not usable.
    NotVerified,
    /// The chain leads to no anchor.
    NoAnchor,
}

/// What [`choose_anchor`] found, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// The anchor, or why none.
    pub outcome: Result<Choice, Refusal>,
    /// The signatures checked.
    pub signature_checks: usize,
}

/// Finds the usable anchor nearest to the device certificate `leaf` that the chain leads to, with the device's
/// other certificates `presented` (any order; extras ignored; a presented copy of an anchor is never trusted as
/// one). Pure and bounded: at most [`MAX_SIGNATURE_CHECKS`] signatures checked, none under a presented RSA key over
/// [`MAX_RSA_BITS`] bits.
pub fn choose_anchor(
    leaf: &[u8],
    presented: &[Vec<u8>],
    anchors: &TrustAnchors,
    now: OffsetDateTime,
    purpose: Purpose,
) -> Judgement {
    if anchors.is_empty() {
        return Judgement { outcome: Err(Refusal::NoAnchor), signature_checks: 0 };
    }
    let mut budget = Budget::default();
    let outcome = match Search::new(anchors).run(&mut budget, leaf, presented, now, purpose) {
        Ok(outcomes) => reduce(anchors, &outcomes),
        Err(e) => Err(Refusal::Chain(e)),
    };
    Judgement { outcome, signature_checks: budget.checks }
}

/// Verifies a TPM's endorsement key certificate against one TPM manufacturer CA, as [`verify_chain`] does for
/// device certificates, except that the certificate must be for endorsement, not client authentication (when it
/// restricts its extended key usage at all). `ek_certificate` is the EK certificate; `intermediates` the other
/// certificates that may complete the path (e.g. the manufacturer's intermediate CAs).
pub fn verify_endorsement_chain(
    ek_certificate: &[u8],
    intermediates: &[Vec<u8>],
    anchor: &[u8],
    now: OffsetDateTime,
) -> Result<VerifiedChain, ChainError> {
    verify_path(ek_certificate, intermediates, anchor, now, Purpose::Endorsement)
}

/// Verifies a device's chain against one trust anchor.
///
/// `leaf` is the device certificate, `presented_intermediates` what else the device sent (any order; extra
/// certificates are ignored; a presented copy of the anchor is never trusted, the given `anchor` is), `anchor` the
/// enrolled CA certificate (root or intermediate) tried now. The path ends at the first certificate issued by the
/// anchor; the anchor itself must be a CA valid at `now`.
pub fn verify_chain(
    leaf: &[u8],
    presented_intermediates: &[Vec<u8>],
    anchor: &[u8],
    now: OffsetDateTime,
) -> Result<VerifiedChain, ChainError> {
    verify_path(leaf, presented_intermediates, anchor, now, Purpose::ClientAuth)
}

fn verify_path(
    leaf: &[u8],
    presented_intermediates: &[Vec<u8>],
    anchor: &[u8],
    now: OffsetDateTime,
    purpose: Purpose,
) -> Result<VerifiedChain, ChainError> {
    let mut anchors = TrustAnchors::new();
    anchors.push(anchor, true);
    let outcomes = Search::new(&anchors).run(&mut Budget::default(), leaf, presented_intermediates, now, purpose)?;
    match outcomes.into_iter().next().flatten() {
        Some(outcome) => outcome,
        None => Err(ChainError::TooLong),
    }
}

/// Each distinct anchor's result: `None` when the walk stopped before reaching it (a nearer anchor won).
type Outcomes = Vec<Option<Result<VerifiedChain, ChainError>>>;

/// The accepted anchor, as trying each in the entries' order would choose it.
fn reduce(anchors: &TrustAnchors, outcomes: &Outcomes) -> Result<Choice, Refusal> {
    let mut best: Option<(usize, usize, &VerifiedChain)> = None;
    let mut unverified = false;
    let mut first_error: Option<&ChainError> = None;
    for (index, entry) in anchors.entries.iter().enumerate() {
        match outcomes.get(entry.cert).and_then(Option::as_ref) {
            Some(Ok(chain)) if entry.usable => {
                if best.is_none_or(|(depth, _, _)| chain.path.len() < depth) {
                    best = Some((chain.path.len(), index, chain));
                }
            }
            Some(Ok(_)) => unverified = true,
            Some(Err(ChainError::UnknownCa { .. })) | None => {}
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match (best, first_error, unverified) {
        (Some((_, entry, chain)), _, _) => Ok(Choice { entry, chain: chain.clone() }),
        (None, Some(error), _) => Err(Refusal::Chain(error.clone())),
        (None, None, true) => Err(Refusal::NotVerified),
        (None, None, false) => Err(Refusal::NoAnchor),
    }
}

/// A certificate above the device's in the path: a presented one, or (when anchors complete paths) an anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Presented(usize),
    Anchor(usize),
}

/// One search over a set of anchors: the anchors it parsed (only those some certificate names as its issuer).
struct Search<'a> {
    anchors: &'a TrustAnchors,
    parsed: Vec<OnceCell<Option<X509Certificate<'a>>>>,
}

/// The signatures a search checked, and their results.
#[derive(Default)]
struct Budget<'a> {
    checks: usize,
    /// (depth of the certificate in the walk, issuer's public key) -> verified.
    checked: Vec<(usize, &'a [u8], bool)>,
}

impl<'a> Search<'a> {
    fn new(anchors: &'a TrustAnchors) -> Self {
        Self { anchors, parsed: anchors.certs.iter().map(|_| OnceCell::new()).collect() }
    }

    /// An anchor, parsed at its first use.
    fn anchor(&self, a: usize) -> Option<&X509Certificate<'a>> {
        let anchors: &'a TrustAnchors = self.anchors;
        let der: &'a [u8] = &anchors.certs.get(a)?.der;
        self.parsed.get(a)?.get_or_init(|| parse_as(der, String::new()).ok()).as_ref()
    }

    /// Every distinct anchor's result; `Err` refuses the chain whatever the anchors (the signature budget).
    fn run(
        &self,
        budget: &mut Budget<'a>,
        leaf: &'a [u8],
        presented: &'a [Vec<u8>],
        now: OffsetDateTime,
        purpose: Purpose,
    ) -> Result<Outcomes, ChainError> {
        let certs = &self.anchors.certs;
        let leaf_cert = match parse_as(leaf, "the device certificate".to_owned()) {
            Ok(cert) => cert,
            Err(e) => return Ok(vec![Some(Err(e)); certs.len()]),
        };
        // Anchors that do not parse fail after the device certificate's own parse error, before anything else.
        let mut outcomes: Outcomes = certs.iter().map(|a| a.malformed.clone().map(Err)).collect();
        let presented_certs = match presented
            .iter()
            .enumerate()
            .map(|(i, der)| parse_as(der, format!("presented certificate {}", i + 1)))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(certs) => certs,
            Err(e) => return Ok(fill(outcomes, &e)),
        };
        let leaf_name = describe(Role::Device, &leaf_cert);
        // The device's own key checks no signature here (the TLS handshake checked one with it), so only the
        // certificates presented as its issuers are held to the key size.
        let early = presented_certs
            .iter()
            .try_for_each(|cert| check_key_size(cert, &describe(Role::Presented, cert)))
            .and_then(|()| check_leaf(&leaf_cert, &leaf_name, purpose, now));
        if let Err(e) = early {
            return Ok(fill(outcomes, &e));
        }

        let mut path: Vec<Link> = Vec::new();
        loop {
            if outcomes.iter().all(Option::is_some) {
                return Ok(outcomes);
            }
            if path.len() + 2 > MAX_CHAIN_LENGTH {
                return Ok(fill(outcomes, &ChainError::TooLong));
            }
            let depth = path.len();
            let current = match path.last() {
                None => Some((&leaf_cert, leaf_name.clone())),
                Some(&link) => self.link_cert(link, &presented_certs),
            };
            let Some((current, current_name)) = current else {
                return Ok(outcomes);
            };
            let issuer = current.issuer().as_raw();
            let named: &[usize] = self.anchors.by_subject.get(issuer).map(Vec::as_slice).unwrap_or_default();
            // Anchors named as the issuer end their path here.
            let mut won = false;
            for &a in named {
                let Some(anchor) = self.anchor(a) else { continue };
                if outcomes.get(a).is_none_or(Option::is_some) {
                    continue;
                }
                let anchor_name = describe(Role::Anchor, anchor);
                let outcome = signed_by(budget, depth, current, &current_name, anchor, &anchor_name, true)?
                    .and_then(|()| self.check_path(&path, &presented_certs, anchor, &anchor_name, now))
                    .map(|()| {
                        let mut ders = Vec::with_capacity(path.len() + 2);
                        ders.push(leaf.to_vec());
                        ders.extend(path.iter().map(|&link| self.link_der(link, presented).to_vec()));
                        ders.push(certs[a].der.clone());
                        VerifiedChain { path: ders, leaf_not_after: time_of(leaf_cert.validity().not_after) }
                    });
                won |= outcome.is_ok() && certs[a].usable;
                outcomes[a] = Some(outcome);
            }
            if won || outcomes.iter().all(Option::is_some) {
                return Ok(outcomes);
            }
            // Otherwise the next certificate up: the first candidate of that name whose signature verifies.
            let mut candidates: Vec<Link> = (0..presented_certs.len())
                .filter(|&i| presented_certs[i].subject().as_raw() == issuer)
                .map(Link::Presented)
                .collect();
            if self.anchors.complete_paths {
                candidates.extend(named.iter().map(|&a| Link::Anchor(a)));
            }
            let mut first_error = None;
            let mut found = None;
            for link in candidates.into_iter().filter(|link| !path.contains(link)) {
                let Some((parent, parent_name)) = self.link_cert(link, &presented_certs) else { continue };
                let trusted = matches!(link, Link::Anchor(_));
                match signed_by(budget, depth, current, &current_name, parent, &parent_name, trusted)? {
                    Ok(()) => {
                        found = Some(link);
                        break;
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match (found, first_error) {
                (Some(link), _) => path.push(link),
                (None, Some(error)) => return Ok(fill(outcomes, &error)),
                (None, None) => {
                    let error =
                        ChainError::UnknownCa { certificate: current_name, issuer: current.issuer().to_string() };
                    return Ok(fill(outcomes, &error));
                }
            }
        }
    }

    /// A linked certificate and how messages name it (`None` only for an anchor that does not parse, which is
    /// never linked: the subject index holds only anchors that parsed).
    fn link_cert<'s>(
        &'s self,
        link: Link,
        presented: &'s [X509Certificate<'a>],
    ) -> Option<(&'s X509Certificate<'a>, String)> {
        match link {
            Link::Presented(i) => presented.get(i).map(|cert| (cert, describe(Role::Presented, cert))),
            Link::Anchor(a) => self.anchor(a).map(|cert| (cert, describe(Role::Anchor, cert))),
        }
    }

    fn link_der(&self, link: Link, presented: &'a [Vec<u8>]) -> &'a [u8] {
        let anchors: &'a TrustAnchors = self.anchors;
        let der = match link {
            Link::Presented(i) => presented.get(i),
            Link::Anchor(a) => anchors.certs.get(a).map(|c| &c.der),
        };
        der.map(Vec::as_slice).unwrap_or_default()
    }

    /// Every CA of a path that reached `anchor`: a CA, allowed to sign, within its path length, understood, and
    /// valid now; the anchor too.
    fn check_path(
        &self,
        path: &[Link],
        presented: &[X509Certificate<'a>],
        anchor: &X509Certificate<'_>,
        anchor_name: &str,
        now: OffsetDateTime,
    ) -> Result<(), ChainError> {
        for (below, &link) in path.iter().enumerate() {
            let Some((cert, name)) = self.link_cert(link, presented) else { continue };
            check_critical_extensions(cert, &name)?;
            check_ca(cert, &name, below)?;
            check_validity(cert, &name, now)?;
        }
        check_critical_extensions(anchor, anchor_name)?;
        check_ca(anchor, anchor_name, path.len())?;
        check_validity(anchor, anchor_name, now)
    }
}

/// Whether `child` (at `depth` in the walk) was signed by `parent`: its key identifiers, the algorithm, the key
/// size (of a parent that is not `trusted`) and then, within the budget, the signature. The outer `Err` ends the
/// search.
fn signed_by<'a>(
    budget: &mut Budget<'a>,
    depth: usize,
    child: &X509Certificate<'_>,
    child_name: &str,
    parent: &X509Certificate<'a>,
    parent_name: &str,
    trusted: bool,
) -> Result<Result<(), ChainError>, ChainError> {
    let bad = |by_key_id| ChainError::BadSignature {
        certificate: child_name.to_owned(),
        issuer: parent_name.to_owned(),
        by_key_id,
    };
    if let (Some(authority), Some(subject)) = (authority_key_id(child), subject_key_id(parent))
        && authority != subject
    {
        return Ok(Err(bad(true)));
    }
    if !accepted_signature_algorithm(&child.signature_algorithm.algorithm) {
        return Ok(Err(ChainError::UnsupportedSignatureAlgorithm {
            certificate: child_name.to_owned(),
            algorithm: child.signature_algorithm.algorithm.to_id_string(),
        }));
    }
    if !trusted {
        check_key_size(parent, parent_name)?;
    }
    let key: &'a [u8] = parent.tbs_certificate.subject_pki.raw;
    if let Some(&(_, _, verified)) = budget.checked.iter().find(|(d, k, _)| *d == depth && *k == key) {
        return Ok(if verified { Ok(()) } else { Err(bad(false)) });
    }
    if budget.checks >= MAX_SIGNATURE_CHECKS {
        return Err(ChainError::TooManySignatureChecks);
    }
    budget.checks += 1;
    let verified = child.verify_signature(Some(parent.public_key())).is_ok();
    budget.checked.push((depth, key, verified));
    Ok(if verified { Ok(()) } else { Err(bad(false)) })
}

/// Every anchor not yet judged gets `error`.
fn fill(mut outcomes: Outcomes, error: &ChainError) -> Outcomes {
    for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
        *outcome = Some(Err(error.clone()));
    }
    outcomes
}

/// A key that reads as an RSA public key (whatever algorithm the certificate claims for it: the verifier picks
/// RSA from the signature's algorithm and reads the key bytes as RSA) has at most [`MAX_RSA_BITS`] bits.
fn check_key_size(cert: &X509Certificate<'_>, name: &str) -> Result<(), ChainError> {
    let Ok((_, rsa)) = RSAPublicKey::from_der(&cert.public_key().subject_public_key.data) else { return Ok(()) };
    let bits = modulus_bits(rsa.modulus);
    if bits > MAX_RSA_BITS {
        return Err(ChainError::KeyTooLarge { certificate: name.to_owned(), bits });
    }
    Ok(())
}

fn subject_key_id<'c>(cert: &'c X509Certificate<'_>) -> Option<&'c [u8]> {
    cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0),
        _ => None,
    })
}

pub(crate) fn authority_key_id<'c>(cert: &'c X509Certificate<'_>) -> Option<&'c [u8]> {
    cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|id| id.0),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
