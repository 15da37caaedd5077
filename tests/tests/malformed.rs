//! Malformed admin requests, and secrets in the log.
//!
//! A seeded generator takes every route of the admin API (`zerotouch_server::http::admin::ROUTES`, so a new route fails
//! the test until the generator knows it) and breaks one thing at a time in an otherwise valid request: the token,
//! the id in the path, the body, a header, the method; then several things at once. Each answer must be a 4xx
//! Azure error (`errorCode` / 1000 = HTTP status, `trackingId`, `message`, `timestampUtc`, `x-ms-error-code`) whose
//! message names what is wrong, and afterwards the service must still be healthy, unchanged, and serve the very
//! requests the faults were made from. The PKI routes get the same treatment: their seeded resources (an issuing CA
//! whose CSR an in-test root signs, an uploaded certificate authority with an outstanding verification code and a
//! proof of possession for it) make every base request valid, and the faults break the certificate bodies too
//! (wrong JSON types, unknown fields, text that is not PEM, certificates of the wrong kind, oversize). Separately, a service that handled keys and tokens every way it can must
//! never have written one of them, nor a private key, to its log.
//!
//! Two known gaps: heads that actix-http refuses before routing (here: more than 96 headers) get a bodiless 431;
//! and arrays where objects belong are accepted today, so they live in an ignored test of their own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use zerotouch_tests::{Backend, Server};

/// The generator's seed; `MALFORMED_SEED` overrides it to explore other request sets.
const DEFAULT_SEED: u64 = 0x2e70_70c4;
/// The body limit of ordinary admin requests and of bulk calls (`crates/server/src/request.rs`).
const BODY_LIMIT: usize = 96 * 1024;
const BULK_BODY_LIMIT: usize = 16 * 1024 * 1024;

const SEED_ENROLLMENT: &str = "seed-dev";
const SEED_GROUP: &str = "seed-group";
const SEED_HUB: &str = "hub-1.example.com";
/// A pending issuing CA: the chain upload (base request) makes it ready, and the DELETE removes it.
const SEED_ISSUING_CA: &str = "seed-ca";
/// The development install's issuing CA (active): activation and CRLs aim at it.
const ACTIVE_ISSUING_CA: &str = "development";
/// An uploaded certificate authority with an outstanding verification code.
const SEED_CA: &str = "seed-factory";
/// The seeded shared access policy.
const SEED_POLICY: &str = "seed-policy";

// ---------------------------------------------------------------------------------------------------------------
// What each route takes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Individual,
    Group,
}

impl Kind {
    fn id_field(self) -> &'static str {
        match self {
            Self::Individual => "registrationId",
            Self::Group => "enrollmentGroupId",
        }
    }

    fn collection(self) -> &'static str {
        match self {
            Self::Individual => "enrollments",
            Self::Group => "enrollmentGroups",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Individual => Self::Group,
            Self::Group => Self::Individual,
        }
    }
}

/// The id a path segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Registration,
    Group,
    Host,
    /// `/pki/issuingCAs/{name}`, `/pki/crl/{issuingCA}`.
    IssuingCa,
    /// `/certificateAuthorities/{name}`.
    CertificateAuthority,
    /// `/sharedAccessPolicies/{name}`.
    Policy,
}

impl IdKind {
    /// What the message of an invalid id names.
    fn field(self) -> &'static str {
        match self {
            Self::Registration => "registrationId",
            Self::Group => "enrollmentGroupId",
            Self::Host => "hostName",
            Self::IssuingCa => "issuing CA name",
            Self::CertificateAuthority => "certificate authority name",
            Self::Policy => "policy name",
        }
    }
}

/// The least role a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Nothing,
    Read,
    Write,
    /// Hubs and the PKI.
    Owner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    None,
    Enrollment(Kind),
    Hub,
    Bulk(Kind),
    Query(Kind),
    /// Any JSON, or none (`POST /registrations/{id}/query`, `POST .../verificationCode`).
    AnyJson,
    /// `POST /pki/issuingCAs`: name, key algorithm, common name.
    NewIssuingCa,
    /// `PUT /pki/issuingCAs/{name}`: `{"certificateChain": PEM}`, or the PEM itself under its media type.
    Chain,
    /// `PUT /certificateAuthorities/{name}`: `{"certificate": PEM or base64 DER}`.
    CaCertificate,
    /// `POST /certificateAuthorities/{name}/verify`: the proof of possession.
    Proof,
    /// `POST /registrations/{id}/revoke`: an optional `{"reason": ...}`.
    Revoke,
    /// `PUT /sharedAccessPolicies/{name}`: rights and optional keys.
    Policy,
}

/// What a route reads from the query string and how it checks its continuation tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueryKind {
    None,
    /// `GET /audit`: `from`, `to`; continuation tokens are event ids.
    Audit,
    /// `GET /pki/certificates`: `expiringWithin`, `status`; continuation tokens are certificate cursors.
    Certificates,
}

/// One method of one route, and what the generator must know to break it.
#[derive(Debug, Clone)]
struct Op {
    method: Method,
    template: &'static str,
    id: Option<IdKind>,
    need: Need,
    body: BodyKind,
    if_match: bool,
    paging: bool,
    query: QueryKind,
}

/// What `method` on `template` takes; `None` for a route this test does not know yet.
fn op(template: &'static str, method: &str) -> Option<Op> {
    use BodyKind as B;
    use IdKind::{CertificateAuthority as Ca, Group as GroupId, Host, IssuingCa, Policy, Registration as RegId};
    use Kind::{Group as G, Individual as I};
    use QueryKind as Q;
    let (id, need, body, if_match, paging, query) = match (template, method) {
        ("/enrollments", "POST") => (None, Need::Write, B::Bulk(I), false, false, Q::None),
        ("/enrollments/query", "POST") => (None, Need::Read, B::Query(I), false, true, Q::None),
        ("/enrollments/{registrationId}", "GET") => (Some(RegId), Need::Read, B::None, false, false, Q::None),
        ("/enrollments/{registrationId}", "PUT") => (Some(RegId), Need::Write, B::Enrollment(I), true, false, Q::None),
        ("/enrollments/{registrationId}", "DELETE") => (Some(RegId), Need::Write, B::None, true, false, Q::None),
        ("/enrollments/{registrationId}/attestationmechanism", "POST") => {
            (Some(RegId), Need::Write, B::None, false, false, Q::None)
        }
        ("/enrollmentGroups", "POST") => (None, Need::Write, B::Bulk(G), false, false, Q::None),
        ("/enrollmentGroups/query", "POST") => (None, Need::Read, B::Query(G), false, true, Q::None),
        ("/enrollmentGroups/{enrollmentGroupId}", "GET") => (Some(GroupId), Need::Read, B::None, false, false, Q::None),
        ("/enrollmentGroups/{enrollmentGroupId}", "PUT") => {
            (Some(GroupId), Need::Write, B::Enrollment(G), true, false, Q::None)
        }
        ("/enrollmentGroups/{enrollmentGroupId}", "DELETE") => {
            (Some(GroupId), Need::Write, B::None, true, false, Q::None)
        }
        ("/enrollmentGroups/{enrollmentGroupId}/attestationmechanism", "POST") => {
            (Some(GroupId), Need::Write, B::None, false, false, Q::None)
        }
        ("/registrations/{registrationId}", "GET") => (Some(RegId), Need::Read, B::None, false, false, Q::None),
        ("/registrations/{registrationId}", "DELETE") => (Some(RegId), Need::Write, B::None, true, false, Q::None),
        ("/registrations/{enrollmentGroupId}/query", "POST") => {
            (Some(GroupId), Need::Read, B::AnyJson, false, true, Q::None)
        }
        ("/registrations/{registrationId}/revoke", "POST") => {
            (Some(RegId), Need::Write, B::Revoke, false, false, Q::None)
        }
        ("/tpmBindings", "GET") => (None, Need::Read, B::None, false, true, Q::None),
        ("/tpmBindings/{registrationId}", "DELETE") => (Some(RegId), Need::Write, B::None, false, false, Q::None),
        ("/hubs", "GET") => (None, Need::Read, B::None, false, false, Q::None),
        ("/hubs/{hostName}", "GET") => (Some(Host), Need::Read, B::None, false, false, Q::None),
        ("/hubs/{hostName}", "PUT") => (Some(Host), Need::Owner, B::Hub, true, false, Q::None),
        ("/hubs/{hostName}", "DELETE") => (Some(Host), Need::Owner, B::None, true, false, Q::None),
        ("/hubs/{hostName}/status", "GET") => (Some(Host), Need::Read, B::None, false, false, Q::None),
        ("/pki/issuingCAs", "GET") => (None, Need::Read, B::None, false, false, Q::None),
        ("/pki/issuingCAs", "POST") => (None, Need::Owner, B::NewIssuingCa, false, false, Q::None),
        ("/pki/issuingCAs/{name}", "GET") => (Some(IssuingCa), Need::Read, B::None, false, false, Q::None),
        ("/pki/issuingCAs/{name}", "PUT") => (Some(IssuingCa), Need::Owner, B::Chain, true, false, Q::None),
        ("/pki/issuingCAs/{name}", "DELETE") => (Some(IssuingCa), Need::Owner, B::None, true, false, Q::None),
        ("/pki/issuingCAs/{name}/activate", "POST") => (Some(IssuingCa), Need::Owner, B::None, true, false, Q::None),
        ("/pki/certificates", "GET") => (None, Need::Read, B::None, false, true, Q::Certificates),
        ("/pki/crl/{issuingCA}", "GET") => (Some(IssuingCa), Need::Nothing, B::None, false, false, Q::None),
        ("/pki/trustBundle", "GET") => (None, Need::Nothing, B::None, false, false, Q::None),
        ("/certificateAuthorities", "GET") => (None, Need::Read, B::None, false, true, Q::None),
        ("/certificateAuthorities/{name}", "GET") => (Some(Ca), Need::Read, B::None, false, false, Q::None),
        ("/certificateAuthorities/{name}", "PUT") => (Some(Ca), Need::Owner, B::CaCertificate, true, false, Q::None),
        ("/certificateAuthorities/{name}", "DELETE") => (Some(Ca), Need::Owner, B::None, true, false, Q::None),
        ("/certificateAuthorities/{name}/verificationCode", "POST") => {
            (Some(Ca), Need::Owner, B::AnyJson, true, false, Q::None)
        }
        ("/certificateAuthorities/{name}/verify", "POST") => (Some(Ca), Need::Owner, B::Proof, false, false, Q::None),
        ("/sharedAccessPolicies", "GET") => (None, Need::Owner, B::None, false, false, Q::None),
        ("/sharedAccessPolicies/{name}", "GET") => (Some(Policy), Need::Owner, B::None, false, false, Q::None),
        ("/sharedAccessPolicies/{name}", "PUT") => (Some(Policy), Need::Owner, B::Policy, true, false, Q::None),
        ("/sharedAccessPolicies/{name}", "DELETE") => (Some(Policy), Need::Owner, B::None, true, false, Q::None),
        ("/sharedAccessPolicies/{name}/keys", "POST") => (Some(Policy), Need::Owner, B::None, false, false, Q::None),
        ("/audit", "GET") => (None, Need::Read, B::None, false, true, Q::Audit),
        ("/healthz" | "/readyz" | "/metrics", "GET") => (None, Need::Nothing, B::None, false, false, Q::None),
        _ => return None,
    };
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    Some(Op { method, template, id, need, body, if_match, paging, query })
}

/// Every (route, method) of the admin API; panics on one the generator does not know.
fn ops() -> Vec<Op> {
    let mut ops = Vec::new();
    for (template, methods) in zerotouch_server::http::admin::ROUTES {
        for method in *methods {
            ops.push(
                op(template, method).unwrap_or_else(|| {
                    panic!("{method} {template} is new: teach tests/tests/malformed.rs what it takes")
                }),
            );
        }
    }
    ops
}

/// `template` with its `{...}` segment replaced by `segment` (already percent-encoded).
fn fill(template: &str, segment: &str) -> String {
    match (template.find('{'), template.find('}')) {
        (Some(start), Some(end)) => format!("{}{segment}{}", &template[..start], &template[end + 1..]),
        _ => template.to_owned(),
    }
}

/// The seeded resource a template's id segment names (for requests that are not creates).
fn seeded_id(template: &str) -> &'static str {
    match template {
        t if t.contains("{hostName}") => SEED_HUB,
        t if t.contains("{enrollmentGroupId}") => SEED_GROUP,
        // Activation and CRLs need a CA with a chain: the active development CA.
        t if t.ends_with("/activate") || t.contains("{issuingCA}") => ACTIVE_ISSUING_CA,
        t if t.starts_with("/pki/issuingCAs/") => SEED_ISSUING_CA,
        t if t.starts_with("/certificateAuthorities/") => SEED_CA,
        t if t.starts_with("/sharedAccessPolicies/") => SEED_POLICY,
        _ => SEED_ENROLLMENT,
    }
}

/// The id a valid request uses: a fresh one for a PUT that creates, else the seeded resource.
fn base_id(op: &Op, n: usize) -> Option<String> {
    let id = op.id?;
    // `PUT /pki/issuingCAs/{name}` uploads a chain to an existing CA: it creates nothing.
    let creates = op.method == Method::PUT && id != IdKind::IssuingCa;
    Some(match (id, creates) {
        (IdKind::Host, true) => format!("mal-{n}.example.com"),
        (_, true) => format!("mal-{n}"),
        (_, false) => seeded_id(op.template).to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Valid documents, which the faults break

fn enrollment_doc(kind: Kind, id: &str) -> Value {
    let mut doc = json!({
        kind.id_field(): id,
        "attestation": {"type": "symmetricKey"},
        "capabilities": {"iotEdge": false},
        "provisioningStatus": "enabled",
        "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
        "allocationPolicy": "hashed",
        "iotHubs": [SEED_HUB],
        "initialTwin": {"tags": {"site": "a"}, "properties": {"desired": {}}},
    });
    if kind == Kind::Individual {
        doc["deviceId"] = json!(id);
        doc["optionalDeviceInformation"] = json!({"model": "x"});
    }
    doc
}

fn hub_doc(host: &str) -> Value {
    json!({"hostName": host, "kind": "none", "allocationWeight": 100, "applyAllocationPolicy": true})
}

fn bulk_doc(kind: Kind, n: usize) -> Value {
    json!({"mode": "create", kind.collection(): [enrollment_doc(kind, &format!("mal-bulk-{n}"))]})
}

fn query_doc(kind: Kind) -> Value {
    json!({"query": format!("SELECT * FROM {}", kind.collection())})
}

fn new_issuing_ca_doc(n: usize) -> Value {
    json!({"name": format!("mal-{n}"), "keyAlgorithm": "ecdsaP256", "commonName": format!("Malformed {n}")})
}

fn policy_doc() -> Value {
    json!({"rights": "EnrollmentRead, EnrollmentWrite", "primaryKey": "", "secondaryKey": STANDARD.encode([7u8; 32])})
}

fn revoke_doc() -> Value {
    json!({"reason": "keyCompromise"})
}

/// The valid body of `op` for the resource `id`.
fn base_body(op: &Op, id: Option<&str>, n: usize, pki: &PkiMaterial) -> Option<Value> {
    let id = id.unwrap_or_default();
    match op.body {
        BodyKind::None | BodyKind::AnyJson => None,
        BodyKind::Enrollment(kind) => Some(enrollment_doc(kind, id)),
        BodyKind::Hub => Some(hub_doc(id)),
        BodyKind::Bulk(kind) => Some(bulk_doc(kind, n)),
        BodyKind::Query(kind) => Some(query_doc(kind)),
        BodyKind::NewIssuingCa => Some(new_issuing_ca_doc(n)),
        BodyKind::Chain => Some(json!({"certificateChain": pki.chain})),
        BodyKind::CaCertificate => Some(json!({"certificate": pki.factory})),
        BodyKind::Proof => Some(json!({"certificate": pki.proof})),
        BodyKind::Revoke => Some(revoke_doc()),
        BodyKind::Policy => Some(policy_doc()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Certificates (rcgen), for the PKI routes

/// The certificates (PEM) the seeded PKI resources are made of, and certificates of the wrong kind for the faults.
struct PkiMaterial {
    /// The seeded issuing CA's certificate (its CSR signed by `root`), then the root: a valid chain upload.
    chain: String,
    /// The root alone: a chain that is not for the seeded CA's key.
    root: String,
    /// The uploaded certificate authority (a self-signed CA).
    factory: String,
    /// The proof of possession for the seeded certificate authority's outstanding code.
    proof: String,
    /// A certificate with the code as CN, signed by another key than the factory's.
    impostor_proof: String,
    /// A device certificate signed by the factory: not a CA, and its CN is not the code.
    device: String,
    /// A CA certificate whose keyUsage lacks keyCertSign.
    no_key_cert_sign: String,
    /// An expired CA certificate.
    expired: String,
}

fn ca_params(cn: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params
}

/// A self-signed CA: its PEM and its issuer.
fn self_signed_ca(params: rcgen::CertificateParams) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, rcgen::Issuer::new(params, key))
}

/// An end-entity certificate for `cn` (a fresh key) signed by `issuer`.
fn end_entity(cn: &str, issuer: &rcgen::Issuer<'static, rcgen::KeyPair>) -> String {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.signed_by(&rcgen::KeyPair::generate().unwrap(), issuer).unwrap().pem()
}

/// Seeds the PKI resources the faults aim at: the pending issuing CA [`SEED_ISSUING_CA`] (its CSR signed here by
/// an in-test root) and the certificate authority [`SEED_CA`] with an outstanding verification code; returns the
/// certificates the base requests and the faults use.
async fn seed_pki(server: &Server, owner: &str) -> PkiMaterial {
    let created =
        ok(server, &simple(Method::POST, "/pki/issuingCAs", owner, Some(json!({"name": SEED_ISSUING_CA})))).await;
    let (root, root_issuer) = self_signed_ca(ca_params("Malformed test root"));
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(created["csr"].as_str().unwrap()).unwrap();
    csr.params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    csr.params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let chain = format!("{}{root}", csr.signed_by(&root_issuer).unwrap().pem());

    let (factory, factory_issuer) = self_signed_ca(ca_params("Malformed factory CA"));
    let path = format!("/certificateAuthorities/{SEED_CA}");
    ok(server, &simple(Method::PUT, &path, owner, Some(json!({"certificate": factory})))).await;
    let code = ok(server, &simple(Method::POST, &format!("{path}/verificationCode"), owner, None)).await;
    let code = code["verificationCode"].as_str().unwrap();
    let (_, impostor) = self_signed_ca(ca_params("Malformed factory CA"));
    let mut no_key_cert_sign = ca_params("CA without keyCertSign");
    no_key_cert_sign.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::CrlSign];
    let mut expired = ca_params("Expired CA");
    expired.not_before = rcgen::date_time_ymd(2000, 1, 1);
    expired.not_after = rcgen::date_time_ymd(2001, 1, 1);
    PkiMaterial {
        chain,
        root,
        proof: end_entity(code, &factory_issuer),
        impostor_proof: end_entity(code, &impostor),
        device: end_entity("device-1", &factory_issuer),
        factory,
        no_key_cert_sign: self_signed_ca(no_key_cert_sign).0,
        expired: self_signed_ca(expired).0,
    }
}

/// `doc` with the field at `path` set to `value`, or removed when `value` is `None`.
fn with(doc: &Value, path: &str, value: Option<Value>) -> Value {
    let mut doc = doc.clone();
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut target = &mut doc;
    for part in parts {
        target = &mut target[part];
    }
    match (value, target.as_object_mut()) {
        (Some(value), Some(object)) => {
            object.insert(last.to_owned(), value);
        }
        (None, Some(object)) => {
            object.remove(last);
        }
        (_, None) => panic!("{path}: not inside an object"),
    }
    doc
}

fn nested(depth: usize, open: &str, inner: &str, close: &str) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

// ---------------------------------------------------------------------------------------------------------------
// Requests, faults and what must come back

/// What the answer to a malformed request must be, besides a 4xx Azure error.
#[derive(Debug, Clone)]
struct Expect {
    /// Acceptable statuses (all 4xx).
    statuses: Vec<u16>,
    /// The exact `errorCode`, when one fault decides it.
    code: Option<u32>,
    /// Text the message must contain (the field, header or id at fault).
    fragment: Option<String>,
}

impl Expect {
    fn code(code: u32, fragment: &str) -> Self {
        let fragment = (!fragment.is_empty()).then(|| fragment.to_owned());
        Self { statuses: vec![u16::try_from(code / 1000).unwrap_or(0)], code: Some(code), fragment }
    }

    fn statuses(statuses: &[u16]) -> Self {
        Self { statuses: statuses.to_vec(), code: None, fragment: None }
    }

    fn any_4xx() -> Self {
        Self::statuses(&(400..500).collect::<Vec<u16>>())
    }
}

const MALFORMED_BODY: u32 = 400_001;
const INVALID_FIELD: u32 = 400_002;
const INVALID_ID: u32 = 400_003;
const INVALID_QUERY: u32 = 400_004;
const INVALID_HEADER: u32 = 400_005;
const UNAUTHENTICATED: u32 = 401_001;
const FORBIDDEN: u32 = 403_001;
const ROUTE_NOT_FOUND: u32 = 404_001;
const NOT_FOUND: u32 = 404_202;
const CONFLICT: u32 = 409_001;
const METHOD_NOT_ALLOWED: u32 = 405_001;
const PRECONDITION_FAILED: u32 = 412_001;
const PAYLOAD_TOO_LARGE: u32 = 413_001;
const UNSUPPORTED_MEDIA_TYPE: u32 = 415_001;

/// One thing wrong with a request.
#[derive(Debug, Clone)]
enum Change {
    /// The `Authorization` header (none when `None`).
    Auth(Option<HeaderValue>),
    /// The path segment of the id (percent-encoded).
    Id(String),
    /// The body bytes.
    Body(Vec<u8>),
    /// The body bytes under this `Content-Type`.
    Typed(HeaderValue, Vec<u8>),
    /// A header (`Content-Type` replaces the JSON one).
    Header(HeaderName, HeaderValue),
    /// The query string, with its `?`.
    Query(String),
}

#[derive(Debug, Clone)]
struct Fault {
    what: String,
    change: Change,
    expect: Expect,
}

fn fault(what: impl Into<String>, change: Change, expect: Expect) -> Fault {
    Fault { what: what.into(), change, expect }
}

#[derive(Debug, Clone)]
struct Request {
    method: Method,
    template: String,
    id: Option<String>,
    query: String,
    auth: Option<HeaderValue>,
    headers: Vec<(HeaderName, HeaderValue)>,
    content_type: Option<HeaderValue>,
    body: Option<Vec<u8>>,
}

impl Request {
    fn path(&self) -> String {
        let path = self.id.as_deref().map_or_else(|| self.template.clone(), |id| fill(&self.template, id));
        format!("{path}{}", self.query)
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Auth(auth) => self.auth = auth.clone(),
            Change::Id(segment) => self.id = Some(segment.clone()),
            Change::Body(body) => {
                self.body = Some(body.clone());
                self.content_type.get_or_insert(HeaderValue::from_static("application/json"));
            }
            Change::Typed(content_type, body) => {
                self.body = Some(body.clone());
                self.content_type = Some(content_type.clone());
            }
            Change::Header(name, value) if name == CONTENT_TYPE => self.content_type = Some(value.clone()),
            Change::Header(name, value) => self.headers.push((name.clone(), value.clone())),
            Change::Query(query) => self.query = query.clone(),
        }
    }
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

/// The valid request of `op` that the faults start from (owner token, seeded or fresh id, valid body).
fn base_request(op: &Op, tokens: &Tokens, n: usize, pki: &PkiMaterial) -> Request {
    let id = base_id(op, n);
    let body = base_body(op, id.as_deref(), n, pki).map(|b| serde_json::to_vec(&b).unwrap());
    Request {
        method: op.method.clone(),
        template: op.template.to_owned(),
        id,
        query: String::new(),
        auth: (op.need != Need::Nothing).then(|| bearer(&tokens.owner)),
        headers: Vec::new(),
        content_type: body.as_ref().map(|_| HeaderValue::from_static("application/json")),
        body,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Token,
    PathId,
    Body,
    Header,
    Method,
    UnknownPath,
    Combined,
}

#[derive(Debug, Clone)]
struct Case {
    category: Category,
    what: String,
    request: Request,
    expect: Expect,
}

// ---------------------------------------------------------------------------------------------------------------
// Tokens

/// Admin tokens: the three roles from `zerotouch admin-token`, and tokens signed with the real key but wrong.
struct Tokens {
    owner: String,
    operator: String,
    reader: String,
    /// Signed with the development key, refused for a claim: (what, token).
    refused: Vec<(&'static str, String)>,
    /// Signed with the development key, verified, but carrying no usable role: (what, token).
    roleless: Vec<(&'static str, String)>,
}

impl Tokens {
    fn new(server: &Server) -> Self {
        let pem = std::fs::read(server.data_dir.join("token-signing.key")).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("zerotouch-dev".into());
        let now = chrono::Utc::now().timestamp();
        let claims = json!({"iss": "zerotouch-dev", "aud": "zerotouch", "sub": "fuzz", "role": "owner",
            "iat": now, "nbf": now, "exp": now + 3600});
        let sign = |claims: &Value, header: &jsonwebtoken::Header| jsonwebtoken::encode(header, claims, &key).unwrap();
        let signed = |path: &str, value: Option<Value>| sign(&with(&claims, path, value), &header);
        let mut other_kid = header.clone();
        other_kid.kid = Some("another-key".into());
        let public = std::fs::read(server.data_dir.join("token-signing.pub.pem")).unwrap();
        let hs256 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&public).unwrap(),
        )
        .unwrap();
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let reader = server.token("reader").unwrap();
        let owner = server.token("owner").unwrap();
        // The reader's signature under a payload that says owner.
        let parts: Vec<&str> = reader.split('.').collect();
        let mut payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["role"] = json!("owner");
        let promoted = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(payload.to_string()), parts[2]);
        // One character in the middle of the signature changed.
        let mut flipped = owner.clone().into_bytes();
        let middle = owner.rfind('.').unwrap() + 40;
        flipped[middle] = if flipped[middle] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let expired = with(&with(&claims, "exp", Some(json!(now - 3600))), "nbf", Some(json!(now - 7200)));
        let refused = vec![
            ("expired token", sign(&expired, &header)),
            ("token not valid yet", signed("nbf", Some(json!(now + 3600)))),
            ("token for another audience", signed("aud", Some(json!("someone-else")))),
            ("token from another issuer", signed("iss", Some(json!("https://evil.example.com")))),
            ("token without exp", signed("exp", None)),
            ("token without sub", signed("sub", None)),
            ("token with an unknown kid", sign(&claims, &other_kid)),
            ("HS256 token keyed with the public key", hs256),
            ("alg none token", unsigned),
            ("reader token promoted to owner", promoted),
            ("token with a changed signature", flipped),
        ];
        let roleless = vec![
            ("token without a role", signed("role", None)),
            ("token with an unknown role", signed("role", Some(json!("root")))),
            ("token with a role of the wrong type", signed("role", Some(json!({"name": "owner"})))),
        ];
        Self { owner, operator: server.token("operator").unwrap(), reader, refused, roleless }
    }

    /// Every token a request of the generator may carry, for the log check.
    fn all(&self) -> Vec<(String, &str)> {
        let mut all = vec![
            ("owner token".to_owned(), self.owner.as_str()),
            ("operator token".to_owned(), self.operator.as_str()),
            ("reader token".to_owned(), self.reader.as_str()),
        ];
        all.extend(self.refused.iter().chain(&self.roleless).map(|(what, t)| ((*what).to_owned(), t.as_str())));
        all
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Faults by kind

fn token_faults(op: &Op, tokens: &Tokens) -> Vec<Fault> {
    if op.need == Need::Nothing {
        return Vec::new();
    }
    let unauthenticated = || Expect::code(UNAUTHENTICATED, "bearer token");
    let header = |text: String| Some(HeaderValue::from_str(&text).unwrap());
    let mut faults = vec![
        fault("no Authorization header", Change::Auth(None), unauthenticated()),
        fault("Bearer without a token", Change::Auth(header("Bearer".into())), unauthenticated()),
        fault("Bearer and a space", Change::Auth(header("Bearer ".into())), unauthenticated()),
        fault("garbage token", Change::Auth(header("Bearer garbage.garbage.garbage".into())), unauthenticated()),
        fault(
            "Basic credentials",
            Change::Auth(header(format!("Basic {}", STANDARD.encode("owner:pw")))),
            unauthenticated(),
        ),
        fault("valid token, wrong scheme", Change::Auth(header(format!("Token {}", tokens.owner))), unauthenticated()),
        fault("valid token without a scheme", Change::Auth(header(tokens.owner.clone())), unauthenticated()),
        fault("40 KB token", Change::Auth(header(format!("Bearer {}", "A".repeat(40_000)))), unauthenticated()),
        fault(
            "non-ASCII Authorization",
            Change::Auth(Some(HeaderValue::from_bytes(b"Bearer \xc3\xa9\xff").unwrap())),
            unauthenticated(),
        ),
    ];
    for (what, token) in &tokens.refused {
        faults.push(fault(*what, Change::Auth(Some(bearer(token))), unauthenticated()));
    }
    for (what, token) in &tokens.roleless {
        faults.push(fault(*what, Change::Auth(Some(bearer(token))), Expect::code(FORBIDDEN, "role")));
    }
    if op.need >= Need::Write {
        faults.push(fault("reader token", Change::Auth(Some(bearer(&tokens.reader))), Expect::code(FORBIDDEN, "role")));
    }
    if op.need >= Need::Owner {
        faults.push(fault(
            "operator token",
            Change::Auth(Some(bearer(&tokens.operator))),
            Expect::code(FORBIDDEN, "role"),
        ));
    }
    faults
}

fn id_faults(op: &Op, n: usize) -> Vec<Fault> {
    let Some(kind) = op.id else { return Vec::new() };
    let field = kind.field();
    let invalid = |what: &str, segment: String| fault(what, Change::Id(segment), Expect::code(INVALID_ID, field));
    let mut faults = vec![
        invalid("129 characters", "x".repeat(129)),
        invalid("encoded slash", "a%2Fb".into()),
        invalid("space", "a%20b".into()),
        invalid("tab", "a%09b".into()),
        invalid("unicode", "d%C3%A9vice".into()),
        invalid("emoji", "%F0%9F%92%A5".into()),
        invalid("NUL", "a%00b".into()),
        invalid("invalid UTF-8", "a%FFb".into()),
        invalid("percent sign", "%25".into()),
        invalid("plus", "a+b".into()),
        invalid("quote", "a%22b".into()),
        invalid("markup", "%3Cscript%3E".into()),
        invalid("question mark", "a%3Fb".into()),
        invalid("hash", "a%23b".into()),
        invalid("backslash", "a%5Cb".into()),
        invalid("star", "*".into()),
        invalid("comma", "a,b".into()),
        // `..` never reaches the service as an id: the client resolves it as a path step.
        fault("dot-dot", Change::Id("..".into()), Expect::statuses(&[400, 404])),
        fault("encoded dot-dot", Change::Id("%2E%2E".into()), Expect::statuses(&[400, 404])),
    ];
    // An empty id inside the path names no route. At the end of it, the path is the collection's with a trailing
    // slash, which names the collection's route as Azure matches paths (`docs/protocol/service-api.md` §2).
    if !op.template.ends_with('}') {
        faults.push(fault("empty", Change::Id(String::new()), Expect::code(ROUTE_NOT_FOUND, "route")));
    }
    match kind {
        IdKind::Host => {
            for (what, host) in [
                ("underscore", "a_b.example.com".to_owned()),
                ("leading dash", "-a.example.com".into()),
                ("empty label", "a..b".into()),
                ("trailing dot", "a.b.".into()),
                ("port 0", "a.b:0".into()),
                ("port too large", "a.b:99999".into()),
                ("port not a number", "a.b:x1".into()),
                ("64-character label", format!("{}.com", "x".repeat(64))),
                ("260 characters", format!("{}.com", vec!["x".repeat(60); 5].join("."))),
            ] {
                faults.push(invalid(what, host));
            }
        }
        IdKind::Registration | IdKind::Group | IdKind::IssuingCa | IdKind::CertificateAuthority | IdKind::Policy => {
            for (what, id) in [("at sign", "a@b"), ("tilde", "~a"), ("semicolon", "a;b"), ("slash-like", "a%E2%88%95b")]
            {
                faults.push(invalid(what, id.into()));
            }
        }
    }
    if kind == IdKind::IssuingCa {
        // Issuing CA names are the lower-case spelling of a DNS label.
        for (what, id) in [
            ("upper case", "Seed-CA".to_owned()),
            ("dot", "a.b".into()),
            ("underscore", "a_b".into()),
            ("leading dash", "-a".into()),
            ("65 characters", "x".repeat(65)),
        ] {
            faults.push(invalid(what, id));
        }
    }
    // A valid id of nothing: the GET, DELETE and POST routes answer 404, and so does the chain upload (a PUT
    // elsewhere would create it).
    if op.method != Method::PUT || kind == IdKind::IssuingCa {
        let absent = match kind {
            IdKind::Host => format!("absent-{n}.example.com"),
            _ => format!("absent-{n}"),
        };
        faults.push(fault("valid id of nothing", Change::Id(absent), Expect::code(NOT_FOUND, "does not exist")));
    }
    faults
}

fn body_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// Bodies that are not JSON, or not JSON this route can take, whatever the route.
fn syntax_faults(base: &Value, limit: usize, body_required: bool, rng: &mut StdRng) -> Vec<Fault> {
    let text = body_bytes(base);
    let malformed = |what: &str, body: Vec<u8>, fragment: &str| {
        fault(what, Change::Body(body), Expect::code(MALFORMED_BODY, fragment))
    };
    let mut faults = Vec::new();
    for _ in 0..3 {
        let cut = rng.random_range(1..text.len());
        faults.push(malformed(&format!("truncated at byte {cut}"), text[..cut].to_vec(), "JSON"));
    }
    let garbage: String = (0..rng.random_range(1..200)).map(|_| rng.random_range(b' '..=b'~') as char).collect();
    faults.push(malformed("not JSON", format!("#{garbage}").into_bytes(), "JSON"));
    let mut bytes = vec![0u8; rng.random_range(1..2000)];
    rng.fill(&mut bytes[..]);
    bytes.insert(0, b'#');
    faults.push(malformed("random bytes", bytes, "JSON"));
    for (what, invalid) in [("0xFF", &b"\xff\xfe"[..]), ("overlong '/'", b"\xc0\xaf"), ("cut sequence", b"\xe2\x82")] {
        let mut body = text.clone();
        body.splice(2..2, invalid.iter().copied());
        faults.push(malformed(&format!("invalid UTF-8 ({what})"), body, "JSON"));
    }
    let mut body = text.clone();
    body.splice(2..2, br"\ud800".iter().copied());
    faults.push(fault("lone surrogate escape", Change::Body(body), Expect::statuses(&[400])));
    faults.push(malformed("byte order mark", [&b"\xef\xbb\xbf"[..], &text].concat(), "JSON"));
    faults.push(malformed("trailing garbage", [&text[..], b" x"].concat(), "JSON"));
    faults.push(malformed("two documents", [&text[..], &text[..]].concat(), "JSON"));
    faults.push(malformed("NaN", br#"{"x": NaN}"#.to_vec(), "JSON"));
    faults.push(malformed("single quotes", b"{'x': 1}".to_vec(), "JSON"));
    faults.push(malformed("comment", br#"{"x": 1 /* c */}"#.to_vec(), "JSON"));
    faults.push(malformed("number out of range", br#"{"x": 1e400}"#.to_vec(), "JSON"));
    faults.push(malformed("10,000 nested arrays, unclosed", "[".repeat(10_000).into_bytes(), "recursion limit"));
    faults.push(malformed("10,000 nested arrays", nested(10_000, "[", "", "]").into_bytes(), "recursion limit"));
    faults.push(malformed(
        "10,000 nested objects",
        nested(10_000, r#"{"a":"#, "1", "}").into_bytes(),
        "recursion limit",
    ));
    let mut big = text;
    big.resize(limit + 1 + rng.random_range(0..2000), b' ');
    faults.push(fault(format!("{} bytes", big.len()), Change::Body(big), Expect::code(PAYLOAD_TOO_LARGE, "bytes")));
    if body_required {
        faults.push(malformed("empty body", Vec::new(), "empty"));
        faults.push(malformed("whitespace body", b" \r\n\t ".to_vec(), "empty"));
    }
    faults
}

/// Documents of `kind` with one field wrong; the message must name the field.
fn enrollment_faults(kind: Kind, id: &str) -> Vec<Fault> {
    let doc = enrollment_doc(kind, id);
    let group = kind == Kind::Group;
    let mut faults = Vec::new();
    let mut add = |what: String, body: Value, code: u32, fragment: &str| {
        faults.push(fault(what, Change::Body(body_bytes(&body)), Expect::code(code, fragment)));
    };
    let mut field = |path: &str, value: Option<Value>, fragment: &str| {
        let what = match &value {
            Some(v) => format!("{path} = {}", truncate(&v.to_string(), 60)),
            None => format!("{path} missing"),
        };
        add(what, with(&doc, path, value), INVALID_FIELD, fragment);
    };
    let id_field = kind.id_field();
    for value in [json!(5), json!(null), json!([]), json!({}), json!(""), json!("x".repeat(129)), json!("a b")] {
        field(id_field, Some(value), id_field);
    }
    field(id_field, Some(json!("dévice")), id_field);
    field(id_field, Some(json!("other-id")), id_field);
    field(id_field, Some(json!("x".repeat(90_000))), id_field);
    field(id_field, None, id_field);
    if group {
        field("deviceId", Some(json!("dev")), "deviceId");
        field("registrationId", Some(json!(id)), "registrationId");
    } else {
        for value in [json!(5), json!(""), json!("a b"), json!("x".repeat(129))] {
            field("deviceId", Some(value), "deviceId");
        }
    }
    for value in
        [None, Some(json!(null)), Some(json!("symmetricKey")), Some(json!(5)), Some(json!([])), Some(json!({}))]
    {
        field("attestation", value, "attestation");
    }
    for value in [
        json!(5),
        json!("bogus"),
        json!(null),
        json!("none"),
        json!([]),
        json!("SymmetricKey"),
        json!({"nested": [[[{"deep": null}]]]}),
    ] {
        field("attestation.type", Some(value), "attestation.type");
    }
    for value in [
        json!("x"),
        json!(5),
        json!({"primaryKey": 5}),
        json!({"primaryKey": "not base64!"}),
        json!({"primaryKey": STANDARD.encode([7u8; 8])}),
        json!({"secondaryKey": STANDARD.encode([7u8; 65])}),
        json!({"tertiaryKey": "x"}),
    ] {
        field("attestation.symmetricKey", Some(value), "attestation.symmetricKey");
    }
    let mut attestation = |value: Value, fragment: &str| field("attestation", Some(value), fragment);
    attestation(json!({"type": "symmetricKey", "tpm": {}}), "attestation.tpm");
    attestation(json!({"type": "symmetricKey", "x509": {}}), "attestation.x509");
    attestation(json!({"type": "symmetricKey", "bogus": 1}), "bogus");
    attestation(json!({"type": "tpm"}), "attestation.tpm");
    attestation(json!({"type": "tpm", "tpm": {"endorsementKey": "!!"}}), "attestation.tpm.endorsementKey");
    attestation(json!({"type": "tpm", "tpm": {"endorsementKey": "AQID"}}), "attestation.tpm.endorsementKey");
    attestation(json!({"type": "tpm", "tpm": {"endorsementKey": 5}}), "attestation.tpm.endorsementKey");
    attestation(json!({"type": "x509"}), "attestation.x509");
    attestation(
        json!({"type": "x509", "x509": {"clientCertificates": {"primary": {"certificate": "garbage!"}}}}),
        "attestation.x509.clientCertificates",
    );
    attestation(
        json!({"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": "garbage!"}}}}),
        if group { "attestation.x509.signingCertificates.primary.certificate" } else { "attestation.x509" },
    );
    attestation(
        json!({"type": "x509", "x509": {"caReferences": {"primary": " "}}}),
        if group { "attestation.x509.caReferences.primary" } else { "attestation.x509" },
    );
    attestation(json!(nested(100, "[", "", "]").parse::<Value>().unwrap()), "attestation");
    for value in [json!("x"), json!(5), json!({"iotEdge": "yes"}), json!({"iotEdge": 1}), json!({"bogus": true})] {
        field("capabilities", Some(value), "capabilities");
    }
    for value in [json!(5), json!([]), json!("bad_host")] {
        field("iotHubHostName", Some(value), "iotHubHostName");
    }
    field("iotHubHostName", Some(json!("unlinked.example.com")), "unlinked.example.com");
    for value in [json!("x"), json!(5), json!([]), json!(true)] {
        field("initialTwin", Some(value), "initialTwin");
    }
    field("etag", Some(json!(5)), "etag");
    field("etag", Some(json!({})), "etag");
    for value in [json!([]), json!("maybe"), json!(5), json!("Enabled"), json!("x".repeat(90_000))] {
        field("provisioningStatus", Some(value), "provisioningStatus");
    }
    for value in [json!("x"), json!({"updateHubAssignment": "yes"}), json!({"bogus": 1})] {
        field("reprovisionPolicy", Some(value), "reprovisionPolicy");
    }
    field("createdDateTimeUtc", Some(json!(5)), "createdDateTimeUtc");
    field("lastUpdatedDateTimeUtc", Some(json!([])), "lastUpdatedDateTimeUtc");
    for value in [json!("random"), json!(5), json!("Hashed")] {
        field("allocationPolicy", Some(value), "allocationPolicy");
    }
    for value in [
        json!("x"),
        json!([5]),
        json!(["bad_host"]),
        json!(["unlinked.example.com"]),
        json!({}),
        json!([SEED_HUB, SEED_HUB.to_uppercase()]),
    ] {
        field("iotHubs", Some(value), "iotHubs");
    }
    for value in [json!("x"), json!({}), json!({"webhookUrl": 5, "apiVersion": "1"})] {
        field("customAllocationDefinition", Some(value), "customAllocationDefinition");
    }
    field("credentialPolicyName", Some(json!(5)), "credentialPolicyName");
    field("bogusField", Some(json!(1)), "bogusField");
    field("RegistrationID", Some(json!(id)), "RegistrationID");
    let statik = with(&with(&doc, "allocationPolicy", Some(json!("static"))), "iotHubs", None);
    add("static allocation without a hub".into(), statik, INVALID_FIELD, "iotHubs");
    let custom = with(&doc, "allocationPolicy", Some(json!("custom")));
    add("custom allocation without a webhook".into(), custom.clone(), INVALID_FIELD, "customAllocationDefinition");
    let hook = |url: &str, version: &str| {
        with(&custom, "customAllocationDefinition", Some(json!({"webhookUrl": url, "apiVersion": version})))
    };
    add("ftp webhook".into(), hook("ftp://hook.example.com", "2021-10-01"), INVALID_FIELD, "webhookUrl");
    add("webhook without a host".into(), hook("https:///x", "2021-10-01"), INVALID_FIELD, "webhookUrl");
    add("blank webhook api version".into(), hook("https://hook.example.com/x", " "), INVALID_FIELD, "apiVersion");
    let deep_twin = format!(r#"{{"a":{}}}"#, nested(200, r#"{"a":"#, "1", "}"));
    let deep =
        with(&doc, "initialTwin", Some(json!("PLACEHOLDER"))).to_string().replace(r#""PLACEHOLDER""#, &deep_twin);
    faults.push(fault(
        "initialTwin nested 200 deep",
        Change::Body(deep.into_bytes()),
        Expect::code(MALFORMED_BODY, "recursion limit"),
    ));
    for (what, value) in [("null", json!(null)), ("number", json!(5)), ("string", json!("doc"))] {
        faults.push(fault(
            format!("body is {what}"),
            Change::Body(body_bytes(&value)),
            Expect::code(INVALID_FIELD, "(body)"),
        ));
    }
    // (serde reads an array as the struct's fields in order: the message names the element at fault.)
    faults.push(fault("body is an array", Change::Body(body_bytes(&json!([doc]))), Expect::code(INVALID_FIELD, "")));
    faults
}

fn hub_faults(host: &str) -> Vec<Fault> {
    let doc = hub_doc(host);
    let mut faults = Vec::new();
    let mut field = |path: &str, value: Option<Value>| {
        let what = match &value {
            Some(v) => format!("{path} = {}", truncate(&v.to_string(), 60)),
            None => format!("{path} missing"),
        };
        faults.push(fault(what, Change::Body(body_bytes(&with(&doc, path, value))), Expect::code(INVALID_FIELD, path)));
    };
    for value in [None, Some(json!(5)), Some(json!("")), Some(json!("other.example.com")), Some(json!("bad_host"))] {
        field("hostName", value);
    }
    field("hostName", Some(json!(null)));
    field("hostName", Some(json!("x".repeat(300))));
    for value in [None, Some(json!("iotHub")), Some(json!(5)), Some(json!(null)), Some(json!("None"))] {
        field("kind", value);
    }
    field("kind", Some(json!("x".repeat(90_000))));
    field("kind", Some(json!({"nested": [[[[{"deep": [null]}]]]]})));
    for value in [
        json!("x"),
        json!(-1),
        json!(0),
        json!(1001),
        json!(1e99),
        json!(1.5),
        json!(true),
        json!([]),
        json!({}),
        json!(4_294_967_296_u64),
        json!("100"),
    ] {
        field("allocationWeight", Some(value));
    }
    for value in [json!("yes"), json!(1), json!([]), json!("true")] {
        field("applyAllocationPolicy", Some(value));
    }
    field("etag", Some(json!(5)));
    field("createdDateTimeUtc", Some(json!(5)));
    field("lastUpdatedDateTimeUtc", Some(json!({})));
    // A hub of kind none takes no settings; settings are an object.
    for value in [json!("x"), json!(5), json!([]), json!({"host": "broker.example.com"})] {
        field("settings", Some(value));
    }
    for (what, value) in [("null", json!(null)), ("number", json!(5))] {
        faults.push(fault(
            format!("body is {what}"),
            Change::Body(body_bytes(&value)),
            Expect::code(INVALID_FIELD, "(body)"),
        ));
    }
    faults.push(fault("body is an array", Change::Body(body_bytes(&json!([doc]))), Expect::code(INVALID_FIELD, "")));
    faults
}

fn bulk_faults(kind: Kind, n: usize) -> Vec<Fault> {
    let doc = bulk_doc(kind, n);
    let collection = kind.collection();
    let mut faults = Vec::new();
    for (what, value) in [
        ("array", json!([doc])),
        ("number", json!(5)),
        ("string", json!("create")),
        ("null", json!(null)),
        ("true", json!(true)),
    ] {
        let body = Change::Body(body_bytes(&value));
        faults.push(fault(format!("bulk body is {what}"), body, Expect::code(MALFORMED_BODY, collection)));
    }
    let mut field = |path: &str, value: Option<Value>, fragment: &str| {
        let what = match &value {
            Some(v) => format!("bulk {path} = {}", truncate(&v.to_string(), 60)),
            None => format!("bulk {path} missing"),
        };
        let body = Change::Body(body_bytes(&with(&doc, path, value)));
        faults.push(fault(what, body, Expect::code(INVALID_FIELD, fragment)));
    };
    for value in
        [None, Some(json!("upsert")), Some(json!(5)), Some(json!("Create")), Some(json!([])), Some(json!(null))]
    {
        field("mode", value, "mode");
    }
    for value in [None, Some(json!("x")), Some(json!({})), Some(json!(5)), Some(json!(null)), Some(json!([]))] {
        field(collection, value, collection);
    }
    field("force", Some(json!(true)), "force");
    let swapped = with(&with(&doc, collection, None), kind.other().collection(), Some(doc[collection].clone()));
    faults.push(fault(
        "bulk items under the other collection",
        Change::Body(body_bytes(&swapped)),
        Expect::code(INVALID_FIELD, collection),
    ));
    let items: Vec<Value> = (0..10_001)
        .map(|i| json!({kind.id_field(): format!("b-{i}"), "attestation": {"type": "symmetricKey"}}))
        .collect();
    let many = with(&doc, collection, Some(Value::Array(items)));
    faults.push(fault("10,001 bulk items", Change::Body(body_bytes(&many)), Expect::code(INVALID_FIELD, collection)));
    faults
}

fn query_faults(kind: Kind) -> Vec<Fault> {
    let collection = kind.collection();
    let other = kind.other().collection();
    [
        json!({"query": 5}),
        json!({"query": null}),
        json!({}),
        json!({"query": ""}),
        json!({"query": "SELECT * FROM devices"}),
        json!({"query": format!("SELECT * FROM {collection} WHERE x = 1")}),
        json!({"query": format!("SELECT * FROM {other}")}),
        json!({"query": format!("DROP TABLE {collection}")}),
        json!({"query": [format!("SELECT * FROM {collection}")]}),
        json!({"query": "x".repeat(90_000)}),
        json!({"Query": format!("SELECT * FROM {collection}")}),
        json!([]),
        json!(5),
        json!(format!("SELECT * FROM {collection}")),
        json!(null),
        json!(true),
    ]
    .into_iter()
    .map(|body| {
        let what = format!("query body {}", truncate(&body.to_string(), 60));
        fault(what, Change::Body(body_bytes(&body)), Expect::code(INVALID_QUERY, "query"))
    })
    .collect()
}

/// `doc` with one field changed (or removed) per case, each refused with 400002 naming `fragment`.
fn field_faults(doc: &Value, cases: Vec<(&str, Option<Value>, &str)>) -> Vec<Fault> {
    cases
        .into_iter()
        .map(|(path, value, fragment)| {
            let what = match &value {
                Some(v) => format!("{path} = {}", truncate(&v.to_string(), 60)),
                None => format!("{path} missing"),
            };
            fault(what, Change::Body(body_bytes(&with(doc, path, value))), Expect::code(INVALID_FIELD, fragment))
        })
        .collect()
}

/// Bodies of the wrong JSON type where an object is expected.
fn body_type_faults(doc: &Value) -> Vec<Fault> {
    let mut faults: Vec<Fault> =
        [("null", json!(null)), ("number", json!(5)), ("string", json!("doc")), ("true", json!(true))]
            .into_iter()
            .map(|(what, value)| {
                fault(
                    format!("body is {what}"),
                    Change::Body(body_bytes(&value)),
                    Expect::code(INVALID_FIELD, "(body)"),
                )
            })
            .collect();
    faults.push(fault("body is an array", Change::Body(body_bytes(&json!([doc]))), Expect::code(INVALID_FIELD, "")));
    faults
}

/// Values of the wrong JSON type for a string field.
fn not_strings() -> Vec<Value> {
    vec![json!(5), json!(null), json!([]), json!({}), json!(true), json!(["x"])]
}

fn new_issuing_ca_faults(n: usize) -> Vec<Fault> {
    let doc = new_issuing_ca_doc(n);
    let mut cases: Vec<(&str, Option<Value>, &str)> = vec![("name", None, "name")];
    for value in not_strings()
        .into_iter()
        .chain(["", "Bad Name", "UPPER", "-lead", "a.b", "a_b", "dévice", &"x".repeat(65)].map(|s| json!(s)))
    {
        cases.push(("name", Some(value), "name"));
    }
    for value in [json!(5), json!([]), json!(""), json!("dsa"), json!("P-256"), json!("EcdsaP256"), json!("rsa1024")] {
        cases.push(("keyAlgorithm", Some(value), "keyAlgorithm"));
    }
    for value in [json!(5), json!([]), json!({}), json!(""), json!("  "), json!("x".repeat(65))] {
        cases.push(("commonName", Some(value), "commonName"));
    }
    cases.push(("colour", Some(json!("red")), "colour"));
    cases.push(("Name", Some(json!("mal-x")), "Name"));
    let mut faults = field_faults(&doc, cases);
    for existing in [SEED_ISSUING_CA, ACTIVE_ISSUING_CA] {
        let body = with(&doc, "name", Some(json!(existing)));
        faults.push(fault(
            format!("name of the existing issuing CA {existing}"),
            Change::Body(body_bytes(&body)),
            Expect::code(CONFLICT, "already exists"),
        ));
    }
    faults.extend(body_type_faults(&doc));
    faults
}

/// A PEM block that is not a certificate inside.
const GARBAGE_PEM: &str = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";

/// The chain upload, as JSON and as raw PEM.
fn chain_faults(pki: &PkiMaterial, rng: &mut StdRng) -> Vec<Fault> {
    let field = "certificateChain";
    let doc = json!({field: pki.chain});
    let reversed = {
        let (issuing, root) = pki.chain.split_at(pki.chain.find(&pki.root).unwrap());
        format!("{root}{issuing}")
    };
    let mut cases: Vec<(&str, Option<Value>, &str)> = vec![(field, None, field)];
    for value in not_strings() {
        cases.push((field, Some(value), field));
    }
    for (text, fragment) in [
        ("".to_owned(), field),
        ("not PEM".to_owned(), field),
        (GARBAGE_PEM.to_owned(), field),
        ("x".repeat(90_000), field),
        (pki.root.clone(), "not for this CA key"),
        (pki.factory.clone(), "not for this CA key"),
        (reversed, field),
        (pki.chain.replace("CERTIFICATE", "PRIVATE KEY"), field),
    ] {
        cases.push((field, Some(json!(text)), fragment));
    }
    cases.push(("colour", Some(json!(1)), "colour"));
    cases.push(("CertificateChain", Some(json!(pki.chain)), "CertificateChain"));
    let mut faults = field_faults(&doc, cases);
    faults.extend(body_type_faults(&doc));
    // The same chain faults as the raw PEM body.
    let pem = HeaderValue::from_static("application/x-pem-file");
    let mut random = vec![0u8; rng.random_range(1..2000)];
    rng.fill(&mut random[..]);
    random.insert(0, 0xff);
    for (what, body) in [
        ("empty PEM body", Vec::new()),
        ("PEM body that is not PEM", b"not PEM".to_vec()),
        ("PEM body with a block that is no certificate", GARBAGE_PEM.as_bytes().to_vec()),
        ("PEM body that is not UTF-8", random),
        ("PEM body that is the JSON document", body_bytes(&doc)),
        ("PEM body with the root alone", pki.root.clone().into_bytes()),
    ] {
        faults.push(fault(what, Change::Typed(pem.clone(), body), Expect::code(INVALID_FIELD, field)));
    }
    let mut big = pki.chain.clone().into_bytes();
    big.resize(BODY_LIMIT + 1 + rng.random_range(0..2000), b'\n');
    faults.push(fault(
        format!("{} bytes of PEM", big.len()),
        Change::Typed(pem, big),
        Expect::code(PAYLOAD_TOO_LARGE, "bytes"),
    ));
    faults
}

/// Certificates that are not one valid certificate of the right kind, in `{"certificate": ...}`; `proof` picks the
/// verify body's refusals (a certificate that is not the proof) over the upload's (a certificate that is no CA).
fn certificate_faults(pki: &PkiMaterial, proof: bool) -> Vec<Fault> {
    let field = "certificate";
    let doc = json!({field: if proof { &pki.proof } else { &pki.factory }});
    let mut cases: Vec<(&str, Option<Value>, &str)> = vec![(field, None, field)];
    for value in not_strings() {
        cases.push((field, Some(value), field));
    }
    let two = format!("{}{}", pki.factory, pki.proof);
    let mut texts = vec![
        ("".to_owned(), field),
        ("not base64!".to_owned(), field),
        ("bm90IGEgY2VydGlmaWNhdGU=".to_owned(), field),
        (GARBAGE_PEM.to_owned(), field),
        ("x".repeat(90_000), field),
        (two, "exactly one"),
        (pki.chain.clone(), "exactly one"),
        (pki.factory.replace("CERTIFICATE", "PRIVATE KEY"), field),
    ];
    if proof {
        texts.push((pki.factory.clone(), "verification code"));
        texts.push((pki.device.clone(), "verification code"));
        texts.push((pki.impostor_proof.clone(), "not signed by the CA"));
    } else {
        texts.push((pki.device.clone(), "not a CA"));
        texts.push((pki.no_key_cert_sign.clone(), "keyCertSign"));
        texts.push((pki.expired.clone(), "expired"));
    }
    for (text, fragment) in texts {
        cases.push((field, Some(json!(text)), fragment));
    }
    cases.push(("colour", Some(json!(1)), "colour"));
    cases.push(("Certificate", Some(json!(pki.factory)), "Certificate"));
    if proof {
        // The upload takes the resource's read-only fields back; the proof takes nothing but the certificate.
        cases.push(("name", Some(json!(SEED_CA)), "name"));
    }
    let mut faults = field_faults(&doc, cases);
    faults.extend(body_type_faults(&doc));
    faults
}

fn revoke_faults() -> Vec<Fault> {
    let doc = revoke_doc();
    let mut cases: Vec<(&str, Option<Value>, &str)> = Vec::new();
    for value in [json!(5), json!([]), json!({}), json!(true), json!(""), json!("stolen"), json!("KeyCompromise")] {
        cases.push(("reason", Some(value), "reason"));
    }
    cases.push(("colour", Some(json!(1)), "colour"));
    cases.push(("Reason", Some(json!("keyCompromise")), "Reason"));
    let mut faults = field_faults(&doc, cases);
    faults.extend(body_type_faults(&doc));
    faults
}

fn policy_faults() -> Vec<Fault> {
    let doc = policy_doc();
    let mut cases: Vec<(&str, Option<Value>, &str)> = Vec::new();
    for value in [None, Some(json!(5)), Some(json!("")), Some(json!("Everything")), Some(json!([1])), Some(json!({}))] {
        cases.push(("rights", value, "rights"));
    }
    for value in [json!(5), json!("c2hvcnQ="), json!("not base64!"), json!([])] {
        cases.push(("primaryKey", Some(value.clone()), "primaryKey"));
        cases.push(("secondaryKey", Some(value), "secondaryKey"));
    }
    cases.push(("keyName", Some(json!("another-policy")), "keyName"));
    cases.push(("keyName", Some(json!(5)), "keyName"));
    cases.push(("colour", Some(json!(1)), "colour"));
    let mut faults = field_faults(&doc, cases);
    faults.extend(body_type_faults(&doc));
    faults
}

fn body_faults(op: &Op, id: Option<&str>, n: usize, pki: &PkiMaterial, rng: &mut StdRng) -> Vec<Fault> {
    let id = id.unwrap_or_default();
    // Routes that take any JSON or none are broken from a query document.
    let base = match base_body(op, Some(id), n, pki) {
        Some(base) => base,
        None if op.body == BodyKind::AnyJson => query_doc(Kind::Individual),
        None => return Vec::new(),
    };
    let (mut faults, limit, required) = match op.body {
        BodyKind::None => return Vec::new(),
        BodyKind::Enrollment(kind) => (enrollment_faults(kind, id), BODY_LIMIT, true),
        BodyKind::Hub => (hub_faults(id), BODY_LIMIT, true),
        BodyKind::Bulk(kind) => (bulk_faults(kind, n), BULK_BODY_LIMIT, true),
        BodyKind::Query(kind) => (query_faults(kind), BODY_LIMIT, false),
        BodyKind::AnyJson => (Vec::new(), BODY_LIMIT, false),
        BodyKind::NewIssuingCa => (new_issuing_ca_faults(n), BODY_LIMIT, true),
        BodyKind::Chain => (chain_faults(pki, rng), BODY_LIMIT, true),
        BodyKind::CaCertificate => (certificate_faults(pki, false), BODY_LIMIT, true),
        BodyKind::Proof => (certificate_faults(pki, true), BODY_LIMIT, true),
        BodyKind::Revoke => (revoke_faults(), BODY_LIMIT, false),
        BodyKind::Policy => (policy_faults(), BODY_LIMIT, true),
    };
    faults.extend(syntax_faults(&base, limit, required, rng));
    faults
}

fn header_faults(op: &Op, rng: &mut StdRng) -> Vec<Fault> {
    let mut faults = Vec::new();
    let value = |text: &str| HeaderValue::from_str(text).unwrap();
    if op.body != BodyKind::None {
        let unsupported = || Expect::code(UNSUPPORTED_MEDIA_TYPE, "Content-Type");
        for text in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/xml",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
            "text/json",
            "json",
            "*/*",
        ] {
            faults.push(fault(
                format!("Content-Type {text}"),
                Change::Header(CONTENT_TYPE, value(text)),
                unsupported(),
            ));
        }
        let bytes = HeaderValue::from_bytes(b"application/j\xc3\xa9son").unwrap();
        faults.push(fault("non-ASCII Content-Type", Change::Header(CONTENT_TYPE, bytes), unsupported()));
    }
    if op.if_match {
        let if_match = HeaderName::from_static("if-match");
        for text in [r#""""#, r#"W/"""#, r#""a"b""#, ",", r#""a", """#, r#"a"b"#, r#""""""#] {
            let what = format!("If-Match {text}");
            faults.push(fault(
                what,
                Change::Header(if_match.clone(), value(text)),
                Expect::code(INVALID_HEADER, "If-Match"),
            ));
        }
        let bytes = HeaderValue::from_bytes(b"\"\xc3\xa9\"").unwrap();
        faults.push(fault(
            "non-ASCII If-Match",
            Change::Header(if_match.clone(), bytes),
            Expect::code(INVALID_HEADER, "If-Match"),
        ));
        // Well-formed but matching nothing: 412 where the resource exists or a PUT would create it.
        let stale = if op.template.starts_with("/registrations") {
            Expect::code(NOT_FOUND, "does not exist")
        } else {
            Expect::code(PRECONDITION_FAILED, "If-Match")
        };
        for text in [r#""nope""#, r#"W/"nope""#, "nope", r#""a", "b""#] {
            faults.push(fault(
                format!("stale If-Match {text}"),
                Change::Header(if_match.clone(), value(text)),
                stale.clone(),
            ));
        }
    }
    if op.paging {
        let count = HeaderName::from_static("x-ms-max-item-count");
        let continuation = HeaderName::from_static("x-ms-continuation");
        let bad_count = || Expect::code(INVALID_HEADER, "x-ms-max-item-count");
        for text in ["0", "-1", "abc", "99999", "1001", "", "1.5", "0x10", "18446744073709551616", "1 000", "1e3"] {
            faults.push(fault(
                format!("x-ms-max-item-count {text:?}"),
                Change::Header(count.clone(), value(text)),
                bad_count(),
            ));
        }
        let bytes = HeaderValue::from_bytes(b"1\xc3\xa9").unwrap();
        faults.push(fault("non-ASCII x-ms-max-item-count", Change::Header(count, bytes), bad_count()));
        let bad_token = || Expect::code(INVALID_HEADER, "x-ms-continuation");
        let mut tokens: Vec<String> =
            ["%%%", "!!!!", "a", "ab=", "/+/+", "_w", "eyJ!"].iter().map(|t| (*t).to_owned()).collect();
        for _ in 0..3 {
            // Random base64url text with one character that is not base64url in it.
            let mut token: String =
                (0..rng.random_range(4..64)).map(|_| *b"ABCxyz019-_".choose(rng).unwrap_or(&b'A') as char).collect();
            token.insert(rng.random_range(0..token.len()), *b"!*%$#@".choose(rng).unwrap_or(&b'!') as char);
            tokens.push(token);
        }
        if op.query != QueryKind::None {
            // Decodes, but not to an audit event id or a certificate cursor.
            tokens.push(URL_SAFE_NO_PAD.encode("zzz"));
        }
        for text in tokens {
            faults.push(fault(
                format!("x-ms-continuation {text:?}"),
                Change::Header(continuation.clone(), value(&text)),
                bad_token(),
            ));
        }
        let bytes = HeaderValue::from_bytes(b"abc\xff").unwrap();
        faults.push(fault("non-ASCII x-ms-continuation", Change::Header(continuation, bytes), bad_token()));
    }
    if op.query == QueryKind::Certificates {
        for (name, texts) in [
            ("expiringWithin", &["soon", "-1d", "", "7", "7x", "%ZZ", "1.5.3d", "99999999999999999999d"][..]),
            ("status", &["expired", "Active", "", "%ZZ", "active,revoked"][..]),
        ] {
            for text in texts {
                let query = format!("?{name}={text}");
                let expect = Expect::code(INVALID_HEADER, &format!("{name}:"));
                faults.push(fault(format!("certificates {query}"), Change::Query(query.clone()), expect));
            }
        }
    }
    if op.query == QueryKind::Audit {
        for name in ["from", "to"] {
            for text in [
                "yesterday",
                "2026-13-01T00%3A00%3A00Z",
                "",
                "2026-01-01",
                "1700000000",
                "%ZZ",
                "2026-01-01T00%3A00%3A00",
            ] {
                let query = format!("?{name}={text}");
                let expect = Expect::code(INVALID_HEADER, &format!("{name}:"));
                faults.push(fault(format!("audit {query}"), Change::Query(query.clone()), expect));
            }
        }
    }
    faults
}

/// Methods a route does not take: 405 whatever else the request holds.
fn method_faults(template: &'static str, methods: &[&str], tokens: &Tokens, rng: &mut StdRng) -> Vec<Case> {
    let path = fill(template, seeded_id(template));
    let mut cases = Vec::new();
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND", "FOO"] {
        if methods.contains(&method) {
            continue;
        }
        let body = (method != "TRACE" && rng.random_bool(0.5)).then(|| body_bytes(&json!({"garbage": [1, 2, 3]})));
        let auth = [None, Some(bearer(&tokens.owner)), Some(bearer(&tokens.reader)), Some(bearer("garbage"))]
            .choose(rng)
            .cloned()
            .flatten();
        cases.push(Case {
            category: Category::Method,
            what: format!("{method} on {template}"),
            request: Request {
                method: Method::from_bytes(method.as_bytes()).unwrap(),
                template: path.clone(),
                id: None,
                query: String::new(),
                auth,
                headers: Vec::new(),
                content_type: body.as_ref().map(|_| HeaderValue::from_static("application/json")),
                body,
            },
            expect: Expect::code(METHOD_NOT_ALLOWED, "method"),
        });
    }
    cases
}

/// Paths no route has. Paths that name a route but for the case of a literal segment or a trailing slash
/// (`/ENROLLMENTS/x`, `/hubs/`) are that route's, as Azure matches paths (`docs/protocol/service-api.md` §2;
/// `tests/tests/service_sas.rs` checks them).
fn unknown_path_cases(tokens: &Tokens, rng: &mut StdRng) -> Vec<Case> {
    let mut paths: Vec<String> = [
        "/",
        "/enrollment",
        "/enrollments/x/y",
        "/enrollments/x/attestationmechanism/y",
        "/enrollments//attestationmechanism",
        "/enrollments%2Fx",
        "/enrollmentGroups/x/query",
        "/enrollmentGroups/x/registrations",
        "/registrations",
        "/registrations/",
        "/registrations/x/query/y",
        "/registrations/x/y",
        "/registrations//query",
        "/hubs/x/y",
        "/audit/x",
        "/healthz/x",
        "/readyz/x",
        "/metrics/x",
        "/api/enrollments",
        "/v1/enrollments",
        "/.env",
        "/%00",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/devices/x/registrations",
        "/0ne00000000/registrations/dev-1/register",
        "/0ne00000000/registrations/dev-1/operations/op-1",
        "/registrations/x/revoke/y",
        "/registrations//revoke",
        "/pki",
        "/pki/",
        "/pki/issuingCAs/x/y",
        "/pki/issuingCAs/x/activate/y",
        "/pki/issuingCAs//activate",
        "/pki/certificates/x",
        "/pki/crl",
        "/pki/crl/",
        "/pki/crl/x/y",
        "/certificateAuthorities/x/y",
        "/certificateAuthorities/x/verify/y",
        "/certificateAuthorities//verify",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect();
    paths.push("/a".repeat(200));
    paths.push(format!("/zz-{}", "x".repeat(8000)));
    for _ in 0..10 {
        let segments: Vec<String> = (0..rng.random_range(1..6))
            .map(|_| {
                (0..rng.random_range(1..12)).map(|_| *b"abcXYZ019-_.~".choose(rng).unwrap_or(&b'a') as char).collect()
            })
            .collect();
        paths.push(format!("/zz-{}", segments.join("/")));
    }
    let mut cases = Vec::new();
    for path in paths {
        for _ in 0..2 {
            let method = ["GET", "POST", "PUT", "DELETE", "PATCH"].choose(rng).copied().unwrap_or("GET");
            let auth = [None, Some(bearer(&tokens.owner))].choose(rng).cloned().flatten();
            cases.push(Case {
                category: Category::UnknownPath,
                what: format!("{method} {}", truncate(&path, 60)),
                request: Request {
                    method: Method::from_bytes(method.as_bytes()).unwrap(),
                    template: path.clone(),
                    id: None,
                    query: if rng.random_bool(0.3) { "?x=1&y=%ZZ".into() } else { String::new() },
                    auth,
                    headers: Vec::new(),
                    content_type: None,
                    body: None,
                },
                expect: Expect::code(ROUTE_NOT_FOUND, "route"),
            });
        }
    }
    cases
}

/// Every malformed request, in a seeded random order.
fn generate(tokens: &Tokens, pki: &PkiMaterial, rng: &mut StdRng) -> Vec<Case> {
    let ops = ops();
    let mut cases = Vec::new();
    let mut per_op: Vec<(usize, Vec<Vec<Fault>>)> = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        let base = base_request(op, tokens, n, pki);
        let kinds = [
            (Category::Token, token_faults(op, tokens)),
            (Category::PathId, id_faults(op, n)),
            (Category::Body, body_faults(op, base.id.as_deref(), n, pki, rng)),
            (Category::Header, header_faults(op, rng)),
        ];
        let mut applicable = Vec::new();
        for (category, faults) in kinds {
            for f in &faults {
                let mut request = base.clone();
                request.apply(&f.change);
                cases.push(Case { category, what: f.what.clone(), request, expect: f.expect.clone() });
            }
            if !faults.is_empty() {
                applicable.push(faults);
            }
        }
        per_op.push((n, applicable));
    }
    // Several faults at once: any 4xx will do, but never a success and never a 5xx.
    let combinable: Vec<&(usize, Vec<Vec<Fault>>)> = per_op.iter().filter(|(_, kinds)| kinds.len() >= 2).collect();
    for _ in 0..300 {
        let (n, kinds) = combinable.choose(rng).copied().unwrap();
        let op = &ops[*n];
        let mut request = base_request(op, tokens, *n, pki);
        let mut picked: Vec<&Vec<Fault>> = kinds.iter().collect();
        picked.shuffle(rng);
        picked.truncate(rng.random_range(2..=picked.len().min(4)));
        let mut what = Vec::new();
        for faults in picked {
            let f = faults.choose(rng).unwrap();
            // The two 16 MiB bodies are sent once each, not again here.
            if matches!(&f.change, Change::Body(b) if b.len() > BODY_LIMIT * 2) {
                continue;
            }
            request.apply(&f.change);
            what.push(f.what.clone());
        }
        if what.is_empty() {
            continue;
        }
        cases.push(Case {
            category: Category::Combined,
            what: format!("{} {}: {}", op.method, op.template, what.join(" + ")),
            request,
            expect: Expect::any_4xx(),
        });
    }
    for (template, methods) in zerotouch_server::http::admin::ROUTES {
        cases.extend(method_faults(template, methods, tokens, rng));
    }
    cases.extend(unknown_path_cases(tokens, rng));
    cases.shuffle(rng);
    cases
}

// ---------------------------------------------------------------------------------------------------------------
// Sending and checking

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(max).collect::<String>())
    }
}

async fn send(server: &Server, request: &Request) -> reqwest::Result<(u16, HeaderMap, Vec<u8>)> {
    let mut builder = server.client.request(request.method.clone(), server.url(&request.path()));
    if let Some(auth) = &request.auth {
        builder = builder.header(reqwest::header::AUTHORIZATION, auth.clone());
    }
    if let Some(content_type) = &request.content_type {
        builder = builder.header(CONTENT_TYPE, content_type.clone());
    }
    for (name, value) in &request.headers {
        builder = builder.header(name.clone(), value.clone());
    }
    if let Some(body) = &request.body {
        builder = builder.body(body.clone());
    }
    // The server closes a connection after some refusals (a 413 whose body it did not read, a 431). A pooled
    // connection can be closed just as the client reuses it; the request then never reached the server, so it is
    // sent once more on a new connection. Any other error is the answer.
    let retry = builder.try_clone();
    let response = match builder.send().await {
        Err(e) if is_stale_connection(&e) && retry.is_some() => match retry {
            Some(retry) => retry.send().await?,
            None => return Err(e),
        },
        other => other?,
    };
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.bytes().await?.to_vec();
    Ok((status, headers, body))
}

/// Whether `error` is a pooled connection that the server had closed (the request was not answered).
fn is_stale_connection(error: &reqwest::Error) -> bool {
    let text = format!("{error:?}");
    error.is_request()
        && ["UnexpectedEof", "IncompleteMessage", "ConnectionReset", "connection closed"]
            .iter()
            .any(|m| text.contains(m))
}

/// Checks that an answer is a 4xx Azure error as `expect` says; returns what is wrong.
fn check_answer(status: u16, headers: &HeaderMap, body: &[u8], expect: &Expect) -> Result<(), String> {
    if !(400..500).contains(&status) {
        return Err(format!("status {status} is not 4xx"));
    }
    if !expect.statuses.contains(&status) {
        return Err(format!("status {status}, expected one of {:?}", expect.statuses));
    }
    let json: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e})"))?;
    let code = json["errorCode"].as_u64().ok_or("errorCode is not a number")?;
    if code / 1000 != u64::from(status) {
        return Err(format!("errorCode {code} does not match status {status}"));
    }
    if let Some(expected) = expect.code
        && code != u64::from(expected)
    {
        return Err(format!("errorCode {code}, expected {expected}"));
    }
    let tracking_id = json["trackingId"].as_str().ok_or("trackingId is not a string")?;
    uuid::Uuid::parse_str(tracking_id).map_err(|_| format!("trackingId {tracking_id:?} is not a UUID"))?;
    let message = json["message"].as_str().filter(|m| !m.trim().is_empty()).ok_or("message is missing or empty")?;
    let timestamp = json["timestampUtc"].as_str().ok_or("timestampUtc is not a string")?;
    chrono::DateTime::parse_from_rfc3339(timestamp)
        .map_err(|_| format!("timestampUtc {timestamp:?} is not RFC 3339"))?;
    let header = headers.get("x-ms-error-code").and_then(|v| v.to_str().ok());
    if header != Some(code.to_string().as_str()) {
        return Err(format!("x-ms-error-code {header:?} differs from errorCode {code}"));
    }
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(format!("Content-Type {content_type:?}"));
    }
    if status == 401 && headers.get("www-authenticate").and_then(|v| v.to_str().ok()) != Some("Bearer") {
        return Err("a 401 without WWW-Authenticate: Bearer".into());
    }
    if let Some(fragment) = &expect.fragment
        && !message.contains(fragment.as_str())
    {
        return Err(format!("the message does not name {fragment:?}"));
    }
    Ok(())
}

/// Sends `request`, which must succeed (2xx), and returns its JSON body (`null` when there is none).
async fn ok(server: &Server, request: &Request) -> Value {
    let (status, _, body) = send(server, request).await.unwrap();
    assert!(
        (200..300).contains(&status),
        "{} {} -> {status}: {}",
        request.method,
        request.path(),
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

fn simple(method: Method, path: &str, token: &str, body: Option<Value>) -> Request {
    Request {
        method,
        template: path.to_owned(),
        id: None,
        query: String::new(),
        auth: Some(bearer(token)),
        headers: Vec::new(),
        content_type: body.as_ref().map(|_| HeaderValue::from_static("application/json")),
        body: body.map(|b| body_bytes(&b)),
    }
}

/// The ids of every item of a collection query (`x-ms-max-item-count` 1000: the test makes fewer).
async fn listed(server: &Server, token: &str, kind: Kind) -> Vec<String> {
    let mut request = simple(Method::POST, &format!("/{}/query", kind.collection()), token, Some(query_doc(kind)));
    request.headers.push((HeaderName::from_static("x-ms-max-item-count"), HeaderValue::from_static("1000")));
    let items = ok(server, &request).await;
    items.as_array().unwrap().iter().map(|i| i[kind.id_field()].as_str().unwrap().to_owned()).collect()
}

async fn etag(server: &Server, token: &str, path: &str) -> String {
    ok(server, &simple(Method::GET, path, token, None)).await["etag"].as_str().unwrap().to_owned()
}

async fn malformed_requests_get_4xx_azure_errors_and_the_server_stays_healthy(backend: Backend) {
    let server = Server::start(backend).await.unwrap();
    let tokens = Tokens::new(&server);
    let owner = tokens.owner.clone();

    // The resources the faults aim at.
    ok(&server, &simple(Method::PUT, &format!("/hubs/{SEED_HUB}"), &owner, Some(hub_doc(SEED_HUB)))).await;
    let doc = enrollment_doc(Kind::Individual, SEED_ENROLLMENT);
    ok(&server, &simple(Method::PUT, &format!("/enrollments/{SEED_ENROLLMENT}"), &owner, Some(doc))).await;
    let doc = enrollment_doc(Kind::Group, SEED_GROUP);
    ok(&server, &simple(Method::PUT, &format!("/enrollmentGroups/{SEED_GROUP}"), &owner, Some(doc))).await;
    let pki = seed_pki(&server, &owner).await;
    let path = format!("/sharedAccessPolicies/{SEED_POLICY}");
    ok(&server, &simple(Method::PUT, &path, &owner, Some(policy_doc()))).await;
    let seeded = [
        format!("/hubs/{SEED_HUB}"),
        format!("/enrollments/{SEED_ENROLLMENT}"),
        format!("/enrollmentGroups/{SEED_GROUP}"),
        format!("/pki/issuingCAs/{SEED_ISSUING_CA}"),
        format!("/pki/issuingCAs/{ACTIVE_ISSUING_CA}"),
        format!("/certificateAuthorities/{SEED_CA}"),
        format!("/sharedAccessPolicies/{SEED_POLICY}"),
    ];
    let mut etags = Vec::new();
    for path in &seeded {
        etags.push(etag(&server, &owner, path).await);
    }

    let seed = std::env::var("MALFORMED_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = generate(&tokens, &pki, &mut rng);
    let mut counts: BTreeMap<Category, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        *counts.entry(case.category).or_default() += 1;
        let outcome = match send(&server, &case.request).await {
            Ok((status, headers, body)) => check_answer(status, &headers, &body, &case.expect).map_err(|problem| {
                format!("{problem}; got {status} {}", truncate(&String::from_utf8_lossy(&body), 300))
            }),
            Err(e) => Err(format!("no answer: {e}")),
        };
        if let Err(problem) = outcome {
            failures.push(format!(
                "[{:?}] {}: {} {}: {problem}",
                case.category,
                case.what,
                case.request.method,
                truncate(&case.request.path(), 120)
            ));
        }
    }
    println!("seed {seed:#x}: {} malformed requests: {counts:?}", cases.len());
    assert!(cases.len() >= 1000, "only {} cases", cases.len());
    assert!(
        failures.is_empty(),
        "seed {seed:#x}: {} of {} malformed requests were answered wrongly; the first ones:\n{}",
        failures.len(),
        cases.len(),
        failures.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );

    // A head actix-http refuses before any route sees it (more than 96 headers) is answered 431 with no body at
    // all: not an Azure error, but a 4xx, and the service goes on.
    let mut many_headers = simple(Method::GET, "/hubs", &owner, None);
    for i in 0..120 {
        let name = HeaderName::from_bytes(format!("x-fuzz-{i}").as_bytes()).unwrap();
        many_headers.headers.push((name, HeaderValue::from_static("1")));
    }
    let (status, headers, body) = send(&server, &many_headers).await.unwrap();
    assert_eq!(status, 431);
    if !body.is_empty() {
        check_answer(status, &headers, &body, &Expect::any_4xx()).unwrap();
    }

    // Still alive and ready, and nothing changed.
    for path in ["/healthz", "/readyz"] {
        let (status, _, _) = send(&server, &simple(Method::GET, path, &owner, None)).await.unwrap();
        assert_eq!(status, 200, "{path}");
    }
    assert_eq!(listed(&server, &owner, Kind::Individual).await, [SEED_ENROLLMENT]);
    assert_eq!(listed(&server, &owner, Kind::Group).await, [SEED_GROUP]);
    let hubs = ok(&server, &simple(Method::GET, "/hubs", &owner, None)).await;
    let hubs: Vec<&str> = hubs.as_array().unwrap().iter().map(|h| h["hostName"].as_str().unwrap()).collect();
    assert_eq!(hubs, [SEED_HUB]);
    for (path, before) in seeded.iter().zip(&etags) {
        assert_eq!(&etag(&server, &owner, path).await, before, "{path} changed");
    }
    let names = |items: &Value, field: &str| -> Vec<String> {
        items.as_array().unwrap().iter().map(|i| format!("{} {}", i["name"], i[field])).collect()
    };
    let issuing = ok(&server, &simple(Method::GET, "/pki/issuingCAs", &owner, None)).await;
    assert_eq!(names(&issuing, "status"), [r#""development" "active""#, r#""seed-ca" "pending""#]);
    let cas = ok(&server, &simple(Method::GET, "/certificateAuthorities", &owner, None)).await;
    assert_eq!(names(&cas, "isVerified"), [r#""seed-factory" false"#]);
    let certificates = ok(&server, &simple(Method::GET, "/pki/certificates", &owner, None)).await;
    assert_eq!(certificates, json!([]));
    let keys = ok(
        &server,
        &simple(Method::POST, &format!("/enrollments/{SEED_ENROLLMENT}/attestationmechanism"), &owner, None),
    )
    .await;
    let group_keys = ok(
        &server,
        &simple(Method::POST, &format!("/enrollmentGroups/{SEED_GROUP}/attestationmechanism"), &owner, None),
    )
    .await;

    // The requests the faults were made from are valid: each fault alone made its request fail. A new
    // verification code would void the proof, so it is asked for after the proof is checked.
    let mut deletes = Vec::new();
    let mut later = Vec::new();
    for (n, op) in ops().iter().enumerate() {
        let request = base_request(op, &tokens, n, &pki);
        if op.method == Method::DELETE {
            deletes.push((op.clone(), request));
            continue;
        }
        if op.template.ends_with("/verificationCode") {
            later.push(request);
            continue;
        }
        if op.template.starts_with("/registrations/{registrationId}") {
            // No device has registered: a valid request about one answers 404.
            let (status, _, _) = send(&server, &request).await.unwrap();
            assert_eq!(status, 404, "{} {}", op.method, op.template);
            continue;
        }
        let answer = ok(&server, &request).await;
        match op.body {
            BodyKind::Bulk(_) => assert_eq!(answer["isSuccessful"], true, "{answer}"),
            BodyKind::Chain => assert_eq!(answer["status"], "ready", "{answer}"),
            BodyKind::Proof => assert_eq!(answer["isVerified"], true, "{answer}"),
            _ => {}
        }
    }
    for request in later {
        ok(&server, &request).await;
    }
    // A valid PUT still works, also over a seeded resource with its etag.
    let mut put = simple(
        Method::PUT,
        &format!("/enrollments/{SEED_ENROLLMENT}"),
        &owner,
        Some(enrollment_doc(Kind::Individual, SEED_ENROLLMENT)),
    );
    put.headers
        .push((HeaderName::from_static("if-match"), HeaderValue::from_str(&format!("\"{}\"", etags[1])).unwrap()));
    ok(&server, &put).await;
    deletes.sort_by_key(|(op, _)| op.template.starts_with("/hubs"));
    for (op, request) in deletes {
        let (status, _, body) = send(&server, &request).await.unwrap();
        // No device has registered, and no TPM holds an id.
        let expected = if op.template.starts_with("/registrations") || op.template.starts_with("/tpmBindings") {
            404
        } else {
            204
        };
        assert_eq!(status, expected, "{} {}: {}", op.method, op.template, String::from_utf8_lossy(&body));
    }

    let logs = server.logs();
    assert!(!logs.contains("panicked"), "the service panicked:\n{}", truncate(&logs, 20_000));
    let internal: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR zerotouch")).collect();
    assert!(internal.is_empty(), "internal errors were logged:\n{}", internal.join("\n"));
    let mut secrets = Secrets::default();
    for (what, token) in tokens.all() {
        secrets.jwt(&what, token);
    }
    for (what, keys) in [("seeded enrollment", &keys), ("seeded group", &group_keys)] {
        for which in ["primaryKey", "secondaryKey"] {
            secrets.key(&format!("{what} {which}"), keys["symmetricKey"][which].as_str().unwrap());
        }
    }
    secrets.private_keys(&server.data_dir);
    secrets.assert_absent_from(&logs);
}

/// Over a thousand malformed requests, on every route, each get a 4xx Azure error naming the fault; none changes
/// anything, and the service stays healthy (SQLite).
#[tokio::test]
async fn malformed_requests_get_4xx_azure_errors_and_the_server_stays_healthy_sqlite() {
    malformed_requests_get_4xx_azure_errors_and_the_server_stays_healthy(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test]
async fn malformed_requests_get_4xx_azure_errors_and_the_server_stays_healthy_postgres() {
    malformed_requests_get_4xx_azure_errors_and_the_server_stays_healthy(Backend::Postgres).await;
}

/// A JSON array is refused where the API takes an object, at the top and inside a document (serde's derived
/// `Deserialize` would read a struct from a sequence, field by field, if `zerotouch_wire::field::decode` let it).
#[tokio::test]
async fn arrays_are_refused_where_objects_are_expected() {
    let server = Server::start(Backend::Sqlite).await.unwrap();
    let owner = server.token("owner").unwrap();
    ok(&server, &simple(Method::PUT, &format!("/hubs/{SEED_HUB}"), &owner, Some(hub_doc(SEED_HUB)))).await;
    let doc = |id: &str, path: &str, value: Value| {
        with(&json!({"registrationId": id, "attestation": {"type": "symmetricKey"}}), path, Some(value))
    };
    let custom = with(
        &doc("arr-7", "allocationPolicy", json!("custom")),
        "customAllocationDefinition",
        Some(json!(["https://hook.example.com/x", "2021-10-01"])),
    );
    let cases = [
        ("/hubs/arr.example.com", json!(["arr.example.com", "none"])),
        ("/enrollments/arr-1", json!(["arr-1", null, null, null, {"type": "symmetricKey"}])),
        ("/enrollmentGroups/arr-2", json!(["arr-2", {"type": "symmetricKey"}])),
        ("/enrollments/arr-3", doc("arr-3", "attestation", json!(["symmetricKey"]))),
        ("/enrollments/arr-4", doc("arr-4", "reprovisionPolicy", json!([]))),
        ("/enrollments/arr-5", doc("arr-5", "attestation", json!({"type": "symmetricKey", "symmetricKey": []}))),
        ("/enrollments/arr-6", doc("arr-6", "capabilities", json!([true]))),
        ("/enrollments/arr-7", custom),
    ];
    let mut accepted = Vec::new();
    for (path, body) in cases {
        let (status, headers, answer) =
            send(&server, &simple(Method::PUT, path, &owner, Some(body.clone()))).await.unwrap();
        if let Err(problem) = check_answer(status, &headers, &answer, &Expect::code(INVALID_FIELD, "")) {
            accepted.push(format!("PUT {path} {body}: {problem}"));
        }
    }
    let bulk = json!({"mode": "create", "enrollments": [["arr-8", null, null, null, {"type": "symmetricKey"}]]});
    let answer = ok(&server, &simple(Method::POST, "/enrollments", &owner, Some(bulk))).await;
    if answer["isSuccessful"] != false {
        accepted.push(format!("POST /enrollments with an array item: {answer}"));
    }
    assert!(accepted.is_empty(), "arrays accepted as objects:\n{}", accepted.join("\n"));
}

// ---------------------------------------------------------------------------------------------------------------
// Secrets in the log

/// Secret strings to look for, each with a label that names it without showing it.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, label: String, value: String) {
        assert!(value.len() >= 16, "{label} is too short to look for without false alarms");
        if !self.0.iter().any(|(_, v)| *v == value) {
            self.0.push((label, value));
        }
    }

    /// A symmetric key, in base64 and in the other spellings a log line might use.
    fn key(&mut self, label: &str, base64: &str) {
        let bytes = STANDARD.decode(base64).unwrap();
        self.add(format!("{label} (base64)"), base64.to_owned());
        self.add(format!("{label} (base64url)"), URL_SAFE_NO_PAD.encode(&bytes));
        self.add(format!("{label} (hex)"), bytes.iter().map(|b| format!("{b:02x}")).collect());
    }

    /// A JWT, whole and its signature.
    fn jwt(&mut self, label: &str, token: &str) {
        self.add(format!("{label} (whole)"), token.to_owned());
        if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() >= 16) {
            self.add(format!("{label} (signature)"), signature.to_owned());
        }
    }

    /// The private keys of the data dir: the PEM body, and each of its full lines.
    fn private_keys(&mut self, data_dir: &Path) {
        for name in ["token-signing.key", "root-ca.key", "server.key"] {
            let pem = std::fs::read_to_string(data_dir.join(name)).unwrap();
            let lines: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(!lines.is_empty(), "{name} has no PEM body");
            self.add(format!("{name} (PEM body)"), lines.concat());
            for (i, line) in lines.iter().enumerate().filter(|(_, l)| l.len() >= 16) {
                self.add(format!("{name} (PEM line {})", i + 1), (*line).to_owned());
            }
        }
    }

    /// The labels of the secrets `logs` holds, with the log line each is on (never the secret itself).
    fn found_in(&self, logs: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (label, value) in &self.0 {
            if let Some(line) = logs.lines().position(|l| l.contains(value.as_str())) {
                found.push(format!("{label} on log line {}", line + 1));
            } else if logs.contains(value.as_str()) {
                found.push(format!("{label} across log lines"));
            }
        }
        found
    }

    fn assert_absent_from(&self, logs: &str) {
        assert!(logs.lines().count() > 10, "the log is (nearly) empty: the check would prove nothing");
        // The check can fail: a log line holding any one secret is caught.
        for (label, value) in &self.0 {
            let planted = format!("2026-01-01T00:00:00Z DEBUG planted: x{value}x\n");
            assert!(!self.found_in(&planted).is_empty(), "a planted {label} was not found");
        }
        let found = self.found_in(logs);
        assert!(found.is_empty(), "secrets in the service's log: {found:#?}");
    }
}

fn random_key(rng: &mut StdRng, len: usize) -> String {
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    STANDARD.encode(bytes)
}

fn keyed(kind: Kind, id: &str, primary: &str, secondary: &str) -> Value {
    json!({kind.id_field(): id, "attestation": {"type": "symmetricKey",
        "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary}}})
}

/// Symmetric keys (generated and given, one by one and in bulk, read back), admin tokens of every role, and the
/// service's private keys never appear in its log, while it logs every request at debug level.
#[tokio::test]
async fn no_secret_appears_in_any_log_line() {
    let mut server = Server::start(Backend::Sqlite).await.unwrap();
    let mut rng = StdRng::seed_from_u64(DEFAULT_SEED ^ 0x5ec2e7);
    let tokens = Tokens::new(&server);
    let (owner, operator, reader) = (tokens.owner.clone(), tokens.operator.clone(), tokens.reader.clone());
    let other_owner =
        zerotouch_tests::admin_token(&server.data_dir, &["--role", "owner", "--subject", "alice"]).unwrap();
    let mut secrets = Secrets::default();
    let mut given = |label: String, len: usize, secrets: &mut Secrets| {
        let key = random_key(&mut rng, len);
        secrets.key(&label, &key);
        key
    };

    ok(&server, &simple(Method::PUT, "/hubs/hub-a.example.com", &owner, Some(hub_doc("hub-a.example.com")))).await;
    let mut ids: Vec<(Kind, String)> = Vec::new();
    for kind in [Kind::Individual, Kind::Group] {
        let collection = kind.collection();
        // Generated keys, one by one.
        for i in 0..2 {
            let id = format!("gen-{i}");
            let doc = json!({kind.id_field(): id, "attestation": {"type": "symmetricKey"}});
            ok(&server, &simple(Method::PUT, &format!("/{collection}/{id}"), &operator, Some(doc))).await;
            ids.push((kind, id));
        }
        // Given keys (16, 32 and 64 bytes), then replaced by other given keys under If-Match.
        let id = "given-0".to_owned();
        let (p, s) = (
            given(format!("{collection} given primary"), 32, &mut secrets),
            given(format!("{collection} given secondary"), 64, &mut secrets),
        );
        let created =
            ok(&server, &simple(Method::PUT, &format!("/{collection}/{id}"), &owner, Some(keyed(kind, &id, &p, &s))))
                .await;
        let (p, s) = (
            given(format!("{collection} replaced primary"), 16, &mut secrets),
            given(format!("{collection} replaced secondary"), 48, &mut secrets),
        );
        let mut replace =
            simple(Method::PUT, &format!("/{collection}/{id}"), &other_owner, Some(keyed(kind, &id, &p, &s)));
        replace.headers.push((
            HeaderName::from_static("if-match"),
            HeaderValue::from_str(&format!("\"{}\"", created["etag"].as_str().unwrap())).unwrap(),
        ));
        ok(&server, &replace).await;
        ids.push((kind, id));
        // Refused documents that carry a valid key beside the fault.
        let p = given(format!("{collection} refused primary"), 32, &mut secrets);
        for (what, doc) in [
            ("short secondary", keyed(kind, "refused", &p, &STANDARD.encode([1u8; 8]))),
            ("unlinked hub", with(&keyed(kind, "refused", &p, &p), "iotHubs", Some(json!(["unlinked.example.com"])))),
            ("unknown field", with(&keyed(kind, "refused", &p, &p), "bogus", Some(json!(1)))),
            ("id mismatch", keyed(kind, "other", &p, &p)),
        ] {
            let (status, _, _) =
                send(&server, &simple(Method::PUT, &format!("/{collection}/refused"), &owner, Some(doc)))
                    .await
                    .unwrap();
            assert_eq!(status, 400, "{what}");
        }
        // Bulk: create (half with given keys), update with new given keys, an item refused, then delete some.
        let count = if kind == Kind::Individual { 40 } else { 8 };
        let items: Vec<Value> = (0..count)
            .map(|i| {
                let id = format!("bulk-{i}");
                if i % 2 == 0 {
                    let (p, s) = (
                        given(format!("{collection} bulk {i} primary"), 32, &mut secrets),
                        given(format!("{collection} bulk {i} secondary"), 32, &mut secrets),
                    );
                    keyed(kind, &id, &p, &s)
                } else {
                    json!({kind.id_field(): id, "attestation": {"type": "symmetricKey"}})
                }
            })
            .collect();
        let answer = ok(
            &server,
            &simple(
                Method::POST,
                &format!("/{collection}"),
                &operator,
                Some(json!({"mode": "create", collection: items})),
            ),
        )
        .await;
        assert_eq!(answer["isSuccessful"], true, "{answer}");
        let mut updates: Vec<Value> = (0..4)
            .map(|i| {
                let (p, s) = (
                    given(format!("{collection} bulk {i} updated primary"), 64, &mut secrets),
                    given(format!("{collection} bulk {i} updated secondary"), 64, &mut secrets),
                );
                keyed(kind, &format!("bulk-{i}"), &p, &s)
            })
            .collect();
        let p = given(format!("{collection} bulk refused primary"), 32, &mut secrets);
        updates.push(keyed(kind, "bulk-refused", &p, "not base64!"));
        let answer = ok(
            &server,
            &simple(
                Method::POST,
                &format!("/{collection}"),
                &owner,
                Some(json!({"mode": "update", collection: updates})),
            ),
        )
        .await;
        assert_eq!(answer["isSuccessful"], false, "{answer}");
        let p = given(format!("{collection} bulk conflict primary"), 32, &mut secrets);
        let conflict = json!({"mode": "create", collection: [keyed(kind, "bulk-1", &p, &p)]});
        let answer = ok(&server, &simple(Method::POST, &format!("/{collection}"), &operator, Some(conflict))).await;
        assert_eq!(answer["isSuccessful"], false, "{answer}");
        let deleted: Vec<Value> = (count - 3..count).map(|i| json!({kind.id_field(): format!("bulk-{i}")})).collect();
        let answer = ok(
            &server,
            &simple(
                Method::POST,
                &format!("/{collection}"),
                &operator,
                Some(json!({"mode": "delete", collection: deleted})),
            ),
        )
        .await;
        assert_eq!(answer["isSuccessful"], true, "{answer}");
        ids.extend((0..count - 3).map(|i| (kind, format!("bulk-{i}"))));
    }

    // Every key, read back by operators and owners; readers are refused.
    for (i, (kind, id)) in ids.iter().enumerate() {
        let token = [&owner, &operator, &other_owner][i % 3];
        let path = format!("/{}/{id}/attestationmechanism", kind.collection());
        let attestation = ok(&server, &simple(Method::POST, &path, token, None)).await;
        for which in ["primaryKey", "secondaryKey"] {
            let key = attestation["symmetricKey"][which].as_str().unwrap();
            secrets.key(&format!("{} {id} {which} as read", kind.collection()), key);
        }
        let (status, _, _) = send(&server, &simple(Method::POST, &path, &reader, None)).await.unwrap();
        assert_eq!(status, 403);
    }
    // Reads, queries and the audit log with every role; refused tokens and a token in the wrong scheme.
    for token in [&owner, &operator, &reader, &other_owner] {
        ok(&server, &simple(Method::GET, "/enrollments/gen-0", token, None)).await;
        ok(&server, &simple(Method::POST, "/enrollmentGroups/query", token, Some(query_doc(Kind::Group)))).await;
        ok(&server, &simple(Method::GET, "/audit", token, None)).await;
    }
    for (_, token) in tokens.refused.iter().chain(&tokens.roleless) {
        let (status, _, _) = send(&server, &simple(Method::GET, "/hubs", token, None)).await.unwrap();
        assert!(status == 401 || status == 403, "{status}");
    }
    let mut wrong_scheme = simple(Method::GET, "/hubs", &owner, None);
    wrong_scheme.auth = Some(HeaderValue::from_str(&format!("Token {owner}")).unwrap());
    assert_eq!(send(&server, &wrong_scheme).await.unwrap().0, 401);

    // Stopping flushes everything the service had to say.
    assert!(server.stop().unwrap().success());
    let logs = server.logs();
    assert!(
        logs.lines().any(|l| l.contains("request received") && l.contains("attestationmechanism")),
        "the log does not show the key reads, so it cannot show a leak either:\n{}",
        truncate(&logs, 5000)
    );
    for (what, token) in tokens.all() {
        secrets.jwt(&what, token);
    }
    secrets.jwt("second owner token", &other_owner);
    secrets.private_keys(&server.data_dir);
    assert!(secrets.0.len() > 300, "only {} secrets to look for", secrets.0.len());
    secrets.assert_absent_from(&logs);
}
