//! Individual enrollments and enrollment groups in the DPS service-API shape (`docs/protocol/device-api.md` §6).
//!
//! A document arrives as [`IndividualEnrollment`] / [`EnrollmentGroup`] (unknown fields refused, so a typo is an
//! error rather than a silently ignored setting), is checked and completed by `normalize`, and is stored without
//! its read-only fields and without its symmetric keys, which live apart (see [`SymmetricKeyAttestation`]).
//!
//! The submodules split the work by what it is about: `attestation` (how a device proves its identity, and the
//! checks of that), `settings` (what an individual enrollment and a group share, and the allocation checks),
//! `document` (the two document kinds as the service shows them, and `render`) and `normalization` (the input
//! shape and `normalize`). Everything is re-exported here, so callers name `enrollment::X` only.

mod attestation;
mod document;
mod normalization;
mod settings;

pub use crate::field::FieldError;

pub use attestation::{
    AttestationMechanism, AttestationType, MAX_ALLOWED_ENDORSEMENT_KEYS, SymmetricKeyAttestation, TpmAttestation,
    TpmRegistrationIdPolicy, X509Attestation, X509CaReferences, X509CertificateWithInfo, X509Certificates,
};
pub use document::{EnrollmentGroup, EnrollmentKind, IndividualEnrollment, render};
pub use normalization::{NormalizedEnrollment, normalize};
pub use settings::{
    AllocationPolicy, CertificatePolicy, CustomAllocationDefinition, DeviceCapabilities, EnrollmentSettings,
    ProvisioningStatus, ReprovisionPolicy,
};
