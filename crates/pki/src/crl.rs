//! Certificate revocation lists of an issuing CA (RFC 5280 §5; issue #4 §5): CRL number, thisUpdate and
//! nextUpdate, the AKI of the issuing CA, and one entry per revoked serial with its reason.

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams};
use time::OffsetDateTime;

use crate::ca::{IssuingCa, whole_seconds};
use crate::serial::Serial;

/// Why a certificate was revoked (RFC 5280 §5.3.1 reason codes we use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    /// No reason given.
    Unspecified,
    /// The device key is known or suspected to be compromised.
    KeyCompromise,
    /// The device moved to another owner or purpose.
    AffiliationChanged,
    /// Replaced by a newer certificate.
    Superseded,
    /// The device is retired (disabled or deleted).
    CessationOfOperation,
    /// The device's right to the certificate was withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason.
    pub const ALL: [RevocationReason; 6] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::PrivilegeWithdrawn,
    ];

    /// The RFC 5280 name, as the API and the database use it (`keyCompromise`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }

    /// Parses [`RevocationReason::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            Self::Unspecified => rcgen::RevocationReason::Unspecified,
            Self::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            Self::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            Self::Superseded => rcgen::RevocationReason::Superseded,
            Self::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            Self::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial number.
    pub serial: Serial,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// Why.
    pub reason: RevocationReason,
}

/// Why a CRL could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlError {
    /// nextUpdate is not after thisUpdate.
    #[error("the CRL's nextUpdate must be after its thisUpdate")]
    NextUpdateNotAfterThisUpdate,
    /// CRL generation failed.
    #[error("CRL generation failed: {0}")]
    Generation(String),
}

/// A DER CRL signed by the issuing CA, listing `entries`, numbered `crl_number` (callers keep it increasing).
pub fn crl(
    ca: &IssuingCa,
    entries: &[Revoked],
    crl_number: u64,
    this_update: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<Vec<u8>, CrlError> {
    let (this_update, next_update) = (whole_seconds(this_update), whole_seconds(next_update));
    if next_update <= this_update {
        return Err(CrlError::NextUpdateNotAfterThisUpdate);
    }
    let number = crl_number.to_be_bytes();
    let first = number.iter().position(|b| *b != 0).unwrap_or(number.len() - 1);
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: rcgen::SerialNumber::from_slice(&number[first..]),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|entry| RevokedCertParams {
                serial_number: entry.serial.to_rcgen(),
                revocation_time: whole_seconds(entry.revoked_at),
                reason_code: Some(entry.reason.to_rcgen()),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::PreSpecified(ca.key_identifier().to_vec()),
    };
    let list = params.signed_by(ca.issuer()).map_err(|e| CrlError::Generation(e.to_string()))?;
    Ok(list.der().to_vec())
}

#[cfg(test)]
mod names {
    use super::*;

    #[test]
    fn reason_names_round_trip() {
        for reason in RevocationReason::ALL {
            assert_eq!(RevocationReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(RevocationReason::parse("KeyCompromise"), None, "names are exact");
        for algorithm in crate::KeyAlgorithm::ALL {
            assert_eq!(crate::KeyAlgorithm::parse(algorithm.as_str()), Some(algorithm));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::development_hierarchy;
    use crate::key::KeyAlgorithm;
    use time::Duration;
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;

    #[test]
    fn the_crl_lists_entries_with_reasons_and_is_signed_by_the_issuing_ca() {
        let now = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
        let (_, ca) = development_hierarchy(KeyAlgorithm::EcdsaP256, now).unwrap();
        let entries = vec![
            Revoked {
                serial: Serial::from_hex("4a0b").unwrap(),
                revoked_at: now,
                reason: RevocationReason::Superseded,
            },
            Revoked {
                serial: Serial::from_hex("7f").unwrap(),
                revoked_at: now,
                reason: RevocationReason::KeyCompromise,
            },
        ];
        let der = crl(&ca, &entries, 258, now, now + Duration::days(1)).unwrap();
        let (rest, list) = CertificateRevocationList::from_der(&der).unwrap();
        assert!(rest.is_empty());
        let ica = crate::certificate::parse(ca.certificate_der()).unwrap();
        list.verify_signature(ica.public_key()).unwrap();
        assert_eq!(list.issuer().as_raw(), ica.subject().as_raw());
        assert_eq!(list.crl_number().map(|n| n.to_string()), Some("258".to_owned()));
        assert_eq!(list.next_update().map(|t| t.to_datetime()), Some(now + Duration::days(1)));
        let serials: Vec<String> = list.iter_revoked_certificates().map(|r| hex::encode(r.raw_serial())).collect();
        assert_eq!(serials, ["4a0b", "7f"]);
        let reasons: Vec<u8> =
            list.iter_revoked_certificates().filter_map(|r| r.reason_code().map(|(_, code)| code.0)).collect();
        assert_eq!(reasons, [4, 1]);
    }

    #[test]
    fn next_update_must_follow_this_update() {
        let now = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
        let (_, ca) = development_hierarchy(KeyAlgorithm::EcdsaP256, now).unwrap();
        assert_eq!(crl(&ca, &[], 1, now, now).unwrap_err(), CrlError::NextUpdateNotAfterThisUpdate);
    }
}
