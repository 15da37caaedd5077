//! The device's TPM, through tss-esapi 7 (ESAPI over tpm2-tss 3.x; tss-esapi 8 needs tpm2-tss 4.1.3).
//!
//! Handles as the Azure C SDK uses them (`docs/protocol/device-api.md` §3.2): the EK at 0x81010001 (standard RSA-2048 EK
//! template, created and persisted when missing), the SRK at 0x81000001 (RSA-2048 restricted decryption key,
//! AES-128-CFB, noDA), and the imported DPS / hub key at 0x81000100. swtpm has no resource manager, so every
//! transient object and session made here is flushed before the call that made it returns, on errors too.

use std::convert::TryFrom;

use anyhow::{Context as _, bail};
use tss_esapi::Context;
use tss_esapi::abstraction::AsymmetricAlgorithmSelection;
use tss_esapi::abstraction::ek;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{AsymmetricAlgorithm, HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Data, Digest, EncryptedSecret, IdObject, MaxBuffer, Nonce, Private, Public, PublicBuilder,
    PublicKeyRsa, PublicRsaParametersBuilder, RsaExponent, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use zerotouch_tpm::activation::{ActivationParts, content};

use crate::DeviceTpm;

/// The EK's persistent handle.
pub const EK_HANDLE: u32 = 0x8101_0001;
/// The SRK's persistent handle.
pub const SRK_HANDLE: u32 = 0x8100_0001;
/// Where the imported key is kept (the C SDK's handle).
pub const KEY_HANDLE: u32 = 0x8100_0100;

/// A TPM, opened through a TCTI (`swtpm:host=127.0.0.1,port=2321`, `device:/dev/tpmrm0`, ...).
pub struct Tpm {
    context: Context,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tpm(..)")
    }
}

fn persistent(handle: u32) -> anyhow::Result<PersistentTpmHandle> {
    PersistentTpmHandle::new(handle).with_context(|| format!("0x{handle:08x} is not a persistent handle"))
}

/// The SRK template of the Azure C SDK (`hsm_client_tpm.c`): RSA-2048, SHA-256, restricted|decrypt|fixedTPM|
/// fixedParent|noDA|userWithAuth|sensitiveDataOrigin, AES-128-CFB, empty unique.
fn srk_template() -> anyhow::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    Ok(PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_rsa_parameters(
            PublicRsaParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                RsaKeyBits::Rsa2048,
                RsaExponent::default(),
            )
            .build()?,
        )
        .with_rsa_unique_identifier(PublicKeyRsa::default())
        .build()?)
}

/// A marshalled `TPM2B_PUBLIC` of a public area.
fn tpm2b(public: &Public) -> anyhow::Result<Vec<u8>> {
    let tpmt = public.marshall()?;
    let size = u16::try_from(tpmt.len()).context("a public area larger than 64 KiB")?;
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(&tpmt);
    Ok(out)
}

impl Tpm {
    /// Connects through `tcti`.
    pub fn open(tcti: &str) -> anyhow::Result<Self> {
        let name: TctiNameConf = tcti.parse().with_context(|| format!("{tcti:?} is not a TCTI"))?;
        let context = Context::new(name).with_context(|| format!("cannot open the TPM at {tcti}"))?;
        Ok(Self { context })
    }

    /// The object at a persistent handle, if there is one (asked with GetCapability first: probing a missing handle
    /// with ReadPublic makes tpm2-tss log errors).
    fn persistent_object(&mut self, handle: u32) -> anyhow::Result<Option<ObjectHandle>> {
        let (data, _) =
            self.context.execute_without_session(|ctx| ctx.get_capability(CapabilityType::Handles, handle, 1))?;
        let present = matches!(&data, CapabilityData::Handles(list) if list.iter().any(|h| u32::from(*h) == handle));
        if !present {
            return Ok(None);
        }
        let handle = TpmHandle::Persistent(persistent(handle)?);
        Ok(Some(self.context.execute_without_session(|ctx| ctx.tr_from_tpm_public(handle))?))
    }

    /// Persists a transient object at `handle` and flushes the transient copy.
    fn persist(&mut self, transient: KeyHandle, handle: u32) -> anyhow::Result<()> {
        let target = Persistent::Persistent(persistent(handle)?);
        let result = self.context.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.evict_control(Provision::Owner, transient.into(), target)
        });
        self.context.flush_context(transient.into())?;
        result.with_context(|| format!("cannot persist the key at 0x{handle:08x}"))?;
        Ok(())
    }

    /// Persists the loaded key `loaded` at `handle`, evicting the key there first (the transient copy is flushed
    /// whatever happens).
    fn replace_persistent(&mut self, loaded: KeyHandle, handle: u32) -> anyhow::Result<()> {
        if let Some(previous) = self.persistent_object(handle)? {
            let target = Persistent::Persistent(persistent(handle)?);
            let evicted = self.context.execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.evict_control(Provision::Owner, previous, target)
            });
            if let Err(e) = evicted {
                self.context.flush_context(loaded.into())?;
                bail!("cannot remove the previous key at 0x{handle:08x}: {e}");
            }
        }
        self.persist(loaded, handle)
    }

    /// The key at `handle`, created from `create` and persisted there when missing; its `TPM2B_PUBLIC`.
    fn read_or_create(
        &mut self,
        handle: u32,
        create: impl FnOnce(&mut Context) -> anyhow::Result<KeyHandle>,
    ) -> anyhow::Result<(KeyHandle, Vec<u8>)> {
        let object = match self.persistent_object(handle)? {
            Some(object) => object,
            None => {
                let transient = create(&mut self.context)?;
                self.persist(transient, handle)?;
                self.persistent_object(handle)?.context("the key just persisted is not there")?
            }
        };
        let key = KeyHandle::from(object);
        let (public, _, _) = self.context.execute_without_session(|ctx| ctx.read_public(key))?;
        Ok((key, tpm2b(&public)?))
    }

    fn endorsement_key(&mut self) -> anyhow::Result<(KeyHandle, Vec<u8>)> {
        self.read_or_create(EK_HANDLE, |ctx| Ok(ek::create_ek_object(ctx, AsymmetricAlgorithm::Rsa, None)?))
    }

    fn storage_root_key(&mut self) -> anyhow::Result<(KeyHandle, Vec<u8>)> {
        self.read_or_create(SRK_HANDLE, |ctx| {
            let template = srk_template()?;
            let created = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
            })?;
            Ok(created.key_handle)
        })
    }

    /// ActivateCredential under a PolicySecret(TPM_RH_ENDORSEMENT) session for the EK (its authPolicy), the SRK
    /// authorized by its empty password. The policy session is flushed whatever happens.
    fn activate_credential(
        &mut self,
        srk: KeyHandle,
        ek: KeyHandle,
        credential: IdObject,
        secret: EncryptedSecret,
    ) -> anyhow::Result<Digest> {
        let session = self
            .context
            .execute_without_session(|ctx| {
                ctx.start_auth_session(
                    None,
                    None,
                    None,
                    SessionType::Policy,
                    SymmetricDefinition::AES_128_CFB,
                    HashingAlgorithm::Sha256,
                )
            })?
            .context("the TPM started no policy session")?;
        let result = (|| -> anyhow::Result<Digest> {
            let policy = PolicySession::try_from(session)?;
            self.context.execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.policy_secret(
                    policy,
                    AuthHandle::Endorsement,
                    Nonce::default(),
                    Digest::default(),
                    Nonce::default(),
                    None,
                )
            })?;
            Ok(self.context.execute_with_sessions((Some(AuthSession::Password), Some(session), None), |ctx| {
                ctx.activate_credential(srk, ek, credential, secret)
            })?)
        })();
        self.context.flush_context(ObjectHandle::from(SessionHandle::from(session)))?;
        result.context("ActivateCredential failed: the blob was not made for this TPM's EK and SRK")
    }
}

impl DeviceTpm for Tpm {
    fn keys(&mut self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let (_, ek) = self.endorsement_key()?;
        let (_, srk) = self.storage_root_key()?;
        Ok((ek, srk))
    }

    fn ek_certificate(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(ek::retrieve_ek_pubcert(&mut self.context, AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048)).ok())
    }

    fn import_key(&mut self, blob: &[u8]) -> anyhow::Result<()> {
        let parts = ActivationParts::split(blob).context("the authenticationKey is not an activation blob")?;
        let credential = IdObject::try_from(content(parts.credential_blob).to_vec())?;
        let secret = EncryptedSecret::try_from(content(parts.secret).to_vec())?;
        let duplicate = Private::try_from(content(parts.duplicate).to_vec())?;
        let seed = EncryptedSecret::try_from(content(parts.encrypted_seed).to_vec())?;
        let public = Public::unmarshall(content(parts.id_key_public))?;
        let (ek, _) = self.endorsement_key()?;
        let (srk, _) = self.storage_root_key()?;

        let inner = self.activate_credential(srk, ek, credential, secret)?;
        let private = self.context.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.import(
                srk.into(),
                Some(Data::try_from(inner.to_vec())?),
                public.clone(),
                duplicate,
                seed,
                SymmetricDefinitionObject::AES_128_CFB,
            )
        })?;
        let loaded =
            self.context.execute_with_session(Some(AuthSession::Password), |ctx| ctx.load(srk, private, public))?;
        // The new key replaces the one kept before (the DPS key, when the hub key arrives).
        self.replace_persistent(loaded, KEY_HANDLE)
    }

    fn create_signing_key(&mut self, handle: u32) -> anyhow::Result<Vec<u8>> {
        use tss_esapi::interface_types::ecc::EccCurve;
        use tss_esapi::structures::{EccScheme, HashScheme};
        let (srk, _) = self.storage_root_key()?;
        let template = tss_esapi::utils::create_unrestricted_signing_ecc_public(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            EccCurve::NistP256,
        )?;
        let created = self.context.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.create(srk, template, None, None, None, None)
        })?;
        let public = created.out_public.clone();
        let loaded = self.context.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.load(srk, created.out_private, created.out_public)
        })?;
        self.replace_persistent(loaded, handle)?;
        match tss_esapi::utils::PublicKey::try_from(public)? {
            tss_esapi::utils::PublicKey::Ecc { x, y } if x.len() <= 32 && y.len() <= 32 => {
                let mut point = vec![0x04];
                point.extend(std::iter::repeat_n(0, 32 - x.len()));
                point.extend(x);
                point.extend(std::iter::repeat_n(0, 32 - y.len()));
                point.extend(y);
                Ok(point)
            }
            _ => bail!("the TPM made a key that is not a P-256 point"),
        }
    }

    fn sign_digest(&mut self, handle: u32, digest: &[u8]) -> anyhow::Result<Vec<u8>> {
        use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
        use tss_esapi::structures::{HashcheckTicket, Signature, SignatureScheme};
        use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
        let key = self.persistent_object(handle)?.with_context(|| format!("no key at 0x{handle:08x}"))?;
        let validation = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })?;
        let digest = Digest::try_from(digest.to_vec())?;
        let signature = self.context.execute_with_session(Some(AuthSession::Password), |ctx| {
            ctx.sign(key.into(), digest, SignatureScheme::Null, validation)
        })?;
        match signature {
            Signature::EcDsa(ecc) => Ok(crate::ecdsa_der(ecc.signature_r().value(), ecc.signature_s().value())),
            _ => bail!("the TPM key at 0x{handle:08x} did not make an ECDSA signature"),
        }
    }

    fn sign(&mut self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let key = self.persistent_object(KEY_HANDLE)?.context("no key imported yet")?;
        let buffer = MaxBuffer::try_from(message.to_vec())?;
        let digest = self
            .context
            .execute_with_session(Some(AuthSession::Password), |ctx| ctx.hmac(key, buffer, HashingAlgorithm::Sha256))?;
        Ok(digest.to_vec())
    }
}
