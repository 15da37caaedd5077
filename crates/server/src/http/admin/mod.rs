//! The admin (service) API: enrollments, enrollment groups, registrations, hubs, the managed CA (`/pki`),
//! certificate authorities, audit, health and metrics.
//!
//! Shapes follow the DPS service API (`docs/protocol/device-api.md` §6). Every route is declared once, in [`routes!`],
//! which both registers it with actix and lists it in [`ROUTES`], the table a test compares with `openapi.yaml`.
//! The public PKI documents (CRLs, trust bundle) are served by [`crate::http::est::configure_public`] on both listeners;
//! the table lists them too, and a unit test checks that they are the ones that module serves.
//! Handlers stay thin: parse the path and body, call the store, render the answer.

mod audit;
mod certificate_authorities;
mod enrollments;
mod health;
mod hubs;
mod pki;
mod registrations;
mod shared_access_policies;

use actix_web::http::Method;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use futures_util::future::LocalBoxFuture;

use super::error::ApiError;
use crate::auth::{AdminStore, Caller, Permission, ServiceSas, Verifier};

use enrollments::{Group, Individual};

/// Declares the routes: `"/path" => { METHOD: handler, ... }`, then, after `served by <configure fn>:`, the
/// routes that function registers (listed in [`ROUTES`], registered by it).
macro_rules! routes {
    (
        $($path:literal => { $($method:ident : $handler:expr),+ $(,)? }),+ $(,)?;
        served by $configure:path : { $($served:literal => [$($served_method:ident),+]),+ $(,)? } $(,)?
    ) => {
        /// Every route of the admin API: path template and the methods it takes.
        pub const ROUTES: &[(&str, &[&str])] = &[
            $(($path, &[$(stringify!($method)),+]),)+
            $(($served, &[$(stringify!($served_method)),+]),)+
        ];

        /// Registers every route, with 405 for other methods and 404 for other paths.
        pub fn configure(cfg: &mut web::ServiceConfig) {
            $(
                cfg.service(
                    web::resource($path)
                        $(.route(web::method(Method::$method).to($handler)))+
                        .default_service(web::to(|| crate::http::error::method_not_allowed(&[$(stringify!($method)),+]))),
                );
            )+
            $configure(cfg);
            cfg.default_service(web::to(crate::http::error::route_not_found));
        }
    };
}

routes! {
    "/enrollments" => { POST: enrollments::bulk::<Individual> },
    "/enrollments/query" => { POST: enrollments::query::<Individual> },
    "/enrollments/{registrationId}" => {
        GET: enrollments::get::<Individual>,
        PUT: enrollments::put::<Individual>,
        DELETE: enrollments::delete::<Individual>,
    },
    "/enrollments/{registrationId}/attestationmechanism" => {
        POST: enrollments::attestation_mechanism::<Individual>,
    },
    "/enrollmentGroups" => { POST: enrollments::bulk::<Group> },
    "/enrollmentGroups/query" => { POST: enrollments::query::<Group> },
    "/enrollmentGroups/{enrollmentGroupId}" => {
        GET: enrollments::get::<Group>,
        PUT: enrollments::put::<Group>,
        DELETE: enrollments::delete::<Group>,
    },
    "/enrollmentGroups/{enrollmentGroupId}/attestationmechanism" => {
        POST: enrollments::attestation_mechanism::<Group>,
    },
    "/registrations/{registrationId}" => {
        GET: registrations::get,
        DELETE: registrations::delete,
    },
    "/registrations/{enrollmentGroupId}/query" => { POST: registrations::query },
    "/registrations/{registrationId}/revoke" => { POST: registrations::revoke },
    "/tpmBindings" => { GET: registrations::tpm_bindings },
    "/tpmBindings/{registrationId}" => { DELETE: registrations::release_tpm_binding },
    "/hubs" => { GET: hubs::list },
    "/hubs/{hostName}" => { GET: hubs::get, PUT: hubs::put, DELETE: hubs::delete },
    "/hubs/{hostName}/status" => { GET: hubs::status },
    "/pki/issuingCAs" => { GET: pki::list, POST: pki::create },
    "/pki/issuingCAs/{name}" => { GET: pki::get, PUT: pki::upload_chain, DELETE: pki::delete },
    "/pki/issuingCAs/{name}/activate" => { POST: pki::activate },
    "/pki/certificates" => { GET: pki::certificates },
    "/certificateAuthorities" => { GET: certificate_authorities::list },
    "/certificateAuthorities/{name}" => {
        GET: certificate_authorities::get,
        PUT: certificate_authorities::put,
        DELETE: certificate_authorities::delete,
    },
    "/certificateAuthorities/{name}/verificationCode" => { POST: certificate_authorities::verification_code },
    "/certificateAuthorities/{name}/verify" => { POST: certificate_authorities::verify },
    "/sharedAccessPolicies" => { GET: shared_access_policies::list },
    "/sharedAccessPolicies/{name}" => {
        GET: shared_access_policies::get,
        PUT: shared_access_policies::put,
        DELETE: shared_access_policies::delete,
    },
    "/sharedAccessPolicies/{name}/keys" => { POST: shared_access_policies::keys },
    "/audit" => { GET: audit::list },
    "/healthz" => { GET: health::alive },
    "/readyz" => { GET: health::ready },
    "/metrics" => { GET: health::metrics };
    served by crate::http::est::configure_public: {
        "/pki/crl/{issuingCA}" => [GET],
        "/pki/trustBundle" => [GET],
    },
}

/// The capability extractor: a handler taking a [`Caller<P>`] runs only for a bearer token that verifies and
/// whose role includes `P`, or a shared access signature whose policy has a right that grants `P` (401 or 403
/// otherwise), and reaches the store only through it.
impl<P: Permission + 'static> FromRequest for Caller<P> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let verifier = req.app_data::<web::Data<Verifier>>().cloned();
        let service_sas = req.app_data::<web::Data<ServiceSas>>().cloned();
        let store = req.app_data::<web::Data<AdminStore>>().cloned();
        let authorization =
            req.headers().get(actix_web::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // The path without its query, which may carry a continuation or a filter the audit log need not keep.
        let request = format!("{} {}", req.method(), req.path());
        Box::pin(async move {
            match (verifier, service_sas, store) {
                (Some(verifier), Some(service_sas), Some(store)) => {
                    Caller::authorize(&verifier, &service_sas, &store, authorization.as_deref(), &request)
                        .await
                        .map_err(ApiError::from)
                }
                _ => Err(ApiError::internal("the admin App has no token verifier, SAS settings or store")),
            }
        })
    }
}

/// How a path names a route.
enum Spelling {
    /// As the route table spells it.
    Exact,
    /// Only case-insensitively: the path in the table's spelling.
    Other(String),
    /// Not at all.
    NoRoute,
}

fn spelling(path: &str) -> Spelling {
    let segments: Vec<&str> = path.split('/').collect();
    let shaped = |route: &'static str| {
        let literals: Vec<&str> = route.split('/').collect();
        (literals.len() == segments.len()).then_some(literals)
    };
    let fits = |literals: &[&str], exact: bool| {
        literals.iter().zip(&segments).all(|(literal, segment)| {
            if literal.starts_with('{') {
                !segment.is_empty()
            } else if exact {
                literal == segment
            } else {
                literal.eq_ignore_ascii_case(segment)
            }
        })
    };
    let candidates: Vec<Vec<&str>> = ROUTES.iter().filter_map(|(route, _)| shaped(route)).collect();
    if candidates.iter().any(|literals| fits(literals, true)) {
        return Spelling::Exact;
    }
    match candidates.iter().find(|literals| fits(literals, false)) {
        Some(literals) => Spelling::Other(
            literals
                .iter()
                .zip(&segments)
                .map(|(l, s)| if l.starts_with('{') { *s } else { *l })
                .collect::<Vec<_>>()
                .join("/"),
        ),
        None => Spelling::NoRoute,
    }
}

/// The path of the route a path names as Azure matches the service API's paths, when that is not the path as
/// sent: literal segments case-insensitively (the Node service SDK sends `/enrollmentgroups/{id}/attestationmechanism`),
/// and a trailing `/` ignored (it sends its bulk calls to `/enrollments/`), `docs/protocol/service-api.md` §2.
/// `None`: the path names a route as it is, or none at all; either way it is left to the router. Parameters are
/// never touched.
pub fn canonical_path(path: &str) -> Option<String> {
    match spelling(path) {
        Spelling::Exact => None,
        Spelling::Other(canonical) => Some(canonical),
        Spelling::NoRoute => match spelling(path.strip_suffix('/').filter(|p| !p.is_empty())?) {
            Spelling::Exact => path.strip_suffix('/').map(str::to_owned),
            Spelling::Other(canonical) => Some(canonical),
            Spelling::NoRoute => None,
        },
    }
}

/// Middleware: routes a path that names a route case-insensitively to that route ([`canonical_path`]).
pub async fn canonical_case(
    mut req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    if let Some(path) = canonical_path(req.path()) {
        let uri = req.uri();
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let mut parts = uri.clone().into_parts();
        if let Ok(rewritten) = path_and_query.parse() {
            parts.path_and_query = Some(rewritten);
            if let Ok(uri) = actix_web::http::Uri::from_parts(parts) {
                req.match_info_mut().get_mut().update(&uri);
                req.head_mut().uri = uri;
            }
        }
    }
    next.call(req).await
}

/// Timestamps as the API shows them.
fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    zerotouch_wire::format_timestamp(at)
}

#[cfg(test)]
mod tests {
    use super::{ROUTES, canonical_path};

    /// Paths that name a route only case-insensitively are given its spelling; paths that name one as they are,
    /// and parameters, are left alone.
    #[test]
    fn paths_match_routes_case_insensitively() {
        let cases = [
            ("/enrollmentgroups/Fleet-1/attestationmechanism", Some("/enrollmentGroups/Fleet-1/attestationmechanism")),
            ("/ENROLLMENTS/dev-1", Some("/enrollments/dev-1")),
            ("/Registrations/G/Query", Some("/registrations/G/query")),
            ("/sharedaccesspolicies/Admin/KEYS", Some("/sharedAccessPolicies/Admin/keys")),
            ("/enrollmentGroups/Fleet-1/attestationmechanism", None),
            // An enrollment whose id is spelled like a route's literal: the id route takes it as it is.
            ("/enrollments/Query", None),
            ("/enrollments/query", None),
            ("/nothing/here", None),
            ("/enrollments//attestationmechanism", None),
            // A trailing slash, as the Node SDK's bulk calls send.
            ("/enrollments/", Some("/enrollments")),
            ("/enrollmentgroups/", Some("/enrollmentGroups")),
            ("/nothing/", None),
            ("/", None),
        ];
        for (path, expected) in cases {
            assert_eq!(canonical_path(path).as_deref(), expected, "{path}");
        }
    }

    /// The routes the table says `est::configure_public` serves are the public ones that module declares.
    #[test]
    fn the_public_pki_routes_are_the_ones_est_serves() {
        for path in ["/pki/crl/{issuingCA}", "/pki/trustBundle"] {
            let ours = ROUTES.iter().find(|(p, _)| *p == path).map(|(_, m)| *m);
            let theirs = crate::http::est::ROUTES.iter().find(|(p, _)| *p == path).map(|(_, m)| *m);
            assert!(ours.is_some(), "{path} is not in admin::ROUTES");
            assert_eq!(ours, theirs, "{path}");
        }
    }
}
