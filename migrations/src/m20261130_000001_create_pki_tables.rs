//! The managed CA (issue #4): our issuing intermediates (`issuing_cas`), the customer CAs that X.509 enrollment
//! groups trust (`certificate_authorities`), and the operational certificates we issued (`certificates`).
//!
//! At most one issuing CA is `active`: a unique partial index (`WHERE status = 'active'`, which SQLite and
//! PostgreSQL both support) makes a second one impossible whatever the code does.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub(crate) struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261130_000001_create_pki_tables"
    }
}

#[derive(DeriveIden)]
enum IssuingCas {
    Table,
    Name,
    KeyAlgorithm,
    EncryptedKey,
    CsrPem,
    ChainPem,
    Status,
    NotAfter,
    CrlNumber,
    CrlRevision,
    CrlDer,
    CrlThisUpdate,
    CrlNextUpdate,
    CrlStale,
    Etag,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum CertificateAuthorities {
    Table,
    Key,
    Name,
    CertificateDer,
    Subject,
    ThumbprintSha256,
    NotAfter,
    Verified,
    VerificationCode,
    VerificationCodeExpiresAt,
    Etag,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Certificates {
    Table,
    Serial,
    RegistrationKey,
    DeviceId,
    IssuingCa,
    NotBefore,
    NotAfter,
    Status,
    ThumbprintSha256,
    RevokedAt,
    RevocationReason,
    CreatedAt,
}

/// The name of the index that allows one active issuing CA.
const ONE_ACTIVE_ISSUING_CA: &str = "issuing_cas_one_active";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IssuingCas::Table)
                    .col(string(IssuingCas::Name).primary_key())
                    .col(string(IssuingCas::KeyAlgorithm))
                    .col(text(IssuingCas::EncryptedKey))
                    .col(text(IssuingCas::CsrPem))
                    .col(text_null(IssuingCas::ChainPem))
                    .col(string(IssuingCas::Status))
                    .col(timestamp_with_time_zone_null(IssuingCas::NotAfter))
                    .col(big_integer(IssuingCas::CrlNumber))
                    .col(big_integer(IssuingCas::CrlRevision))
                    .col(binary_null(IssuingCas::CrlDer))
                    .col(timestamp_with_time_zone_null(IssuingCas::CrlThisUpdate))
                    .col(timestamp_with_time_zone_null(IssuingCas::CrlNextUpdate))
                    .col(boolean(IssuingCas::CrlStale))
                    .col(string(IssuingCas::Etag))
                    .col(timestamp_with_time_zone(IssuingCas::CreatedAt))
                    .col(timestamp_with_time_zone(IssuingCas::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(ONE_ACTIVE_ISSUING_CA)
                    .table(IssuingCas::Table)
                    .col(IssuingCas::Status)
                    .unique()
                    .and_where(Expr::col(IssuingCas::Status).eq("active"))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(CertificateAuthorities::Table)
                    .col(string(CertificateAuthorities::Key).primary_key())
                    .col(string(CertificateAuthorities::Name))
                    .col(binary(CertificateAuthorities::CertificateDer))
                    .col(text(CertificateAuthorities::Subject))
                    .col(string(CertificateAuthorities::ThumbprintSha256))
                    .col(timestamp_with_time_zone(CertificateAuthorities::NotAfter))
                    .col(boolean(CertificateAuthorities::Verified))
                    .col(string_null(CertificateAuthorities::VerificationCode))
                    .col(timestamp_with_time_zone_null(CertificateAuthorities::VerificationCodeExpiresAt))
                    .col(string(CertificateAuthorities::Etag))
                    .col(timestamp_with_time_zone(CertificateAuthorities::CreatedAt))
                    .col(timestamp_with_time_zone(CertificateAuthorities::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Certificates::Table)
                    .col(string(Certificates::Serial).primary_key())
                    .col(string(Certificates::RegistrationKey))
                    .col(string(Certificates::DeviceId))
                    .col(string(Certificates::IssuingCa))
                    .col(timestamp_with_time_zone(Certificates::NotBefore))
                    .col(timestamp_with_time_zone(Certificates::NotAfter))
                    .col(string(Certificates::Status))
                    .col(string_uniq(Certificates::ThumbprintSha256))
                    .col(timestamp_with_time_zone_null(Certificates::RevokedAt))
                    .col(string_null(Certificates::RevocationReason))
                    .col(timestamp_with_time_zone(Certificates::CreatedAt))
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            ("certificates_by_registration", [Certificates::RegistrationKey, Certificates::Status]),
            ("certificates_by_issuer", [Certificates::IssuingCa, Certificates::Status]),
            ("certificates_by_expiry", [Certificates::NotAfter, Certificates::Serial]),
        ] {
            let mut index = Index::create();
            index.name(name).table(Certificates::Table);
            for column in columns {
                index.col(column);
            }
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in
            [Certificates::Table.into_iden(), CertificateAuthorities::Table.into_iden(), IssuingCas::Table.into_iden()]
        {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
