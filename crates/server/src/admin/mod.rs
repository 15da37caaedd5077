//! The admin (service) API: enrollments, enrollment groups, registrations, hubs, audit, health and metrics.
//!
//! Shapes follow the DPS service API (`azure-dps-wire.md` §6). Every route is declared once, in [`routes!`],
//! which both registers it with actix and lists it in [`ROUTES`], the table a test compares with `openapi.yaml`.
//! Handlers stay thin: parse the path and body, call the store, render the answer.

mod audit;
mod enrollments;
mod health;
mod hubs;
mod registrations;

use actix_web::http::Method;
use actix_web::web;

use enrollments::{Group, Individual};

/// Declares the routes: `"/path" => { METHOD: handler, ... }`.
macro_rules! routes {
    ($($path:literal => { $($method:ident : $handler:expr),+ $(,)? }),+ $(,)?) => {
        /// Every route of the admin API: path template and the methods it takes.
        pub const ROUTES: &[(&str, &[&str])] = &[$(($path, &[$(stringify!($method)),+])),+];

        /// Registers every route, with 405 for other methods and 404 for other paths.
        pub fn configure(cfg: &mut web::ServiceConfig) {
            $(
                cfg.service(
                    web::resource($path)
                        $(.route(web::method(Method::$method).to($handler)))+
                        .default_service(web::to(|| crate::error::method_not_allowed(&[$(stringify!($method)),+]))),
                );
            )+
            cfg.default_service(web::to(crate::error::route_not_found));
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
    "/hubs" => { GET: hubs::list },
    "/hubs/{hostName}" => { GET: hubs::get, PUT: hubs::put, DELETE: hubs::delete },
    "/audit" => { GET: audit::list },
    "/healthz" => { GET: health::alive },
    "/readyz" => { GET: health::ready },
    "/metrics" => { GET: health::metrics },
}

/// Timestamps as the API shows them.
fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    zerotouch_wire::format_timestamp(at)
}
