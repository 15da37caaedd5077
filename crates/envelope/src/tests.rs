#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;

use super::*;

const ROW: Binding<'static> =
    Binding { table: "individual_enrollments", column: "primary_symmetric_key", record: "dev-1" };

fn master() -> AesKey {
    MasterKey::generate().unwrap().0
}

fn data_key() -> DataKey {
    DataKey::generate_wrapped(&master()).unwrap().0
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// The AES-256-GCM under the envelope is the standard one: Test Case 16 of McGrew and Viega, "The Galois/Counter
/// Mode of Operation (GCM)" (the NIST submission, 2005), 256-bit key, 96-bit IV, with associated data.
#[test]
fn aes_256_gcm_matches_the_gcm_specification_test_case_16() {
    let key =
        AesKey::new(KeyId([0; 8]), &hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")).unwrap();
    let nonce: [u8; 12] = hex("cafebabefacedbaddecaf888").try_into().unwrap();
    let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let plaintext = hex(concat!(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
        "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
    ));
    let expected = hex(concat!(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa",
        "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b"
    ));
    assert_eq!(key.encrypt(&nonce, &aad, &plaintext).unwrap(), expected);
    assert_eq!(key.decrypt(&nonce, &aad, &expected).unwrap().as_slice(), plaintext.as_slice());
}

/// What is sealed opens where it was sealed, and the envelope has the documented layout.
#[test]
fn a_sealed_value_opens_in_its_place_and_has_the_documented_layout() {
    let key = data_key();
    let sealed = key.seal(&ROW, b"the key").unwrap();
    assert!(is_sealed(&sealed));
    assert!(!sealed.contains("the key"));
    assert_eq!(key.open(&ROW, &sealed).unwrap().as_slice(), b"the key");
    let bytes = URL_SAFE_NO_PAD.decode(sealed.strip_prefix(PREFIX).unwrap()).unwrap();
    assert_eq!(bytes[0], VERSION);
    assert_eq!(&bytes[1..9], &key.id().0);
    assert_eq!(bytes.len(), 1 + 8 + 12 + b"the key".len() + 16);
    assert_eq!(key_id_of(&sealed).unwrap(), key.id());
}

/// Two seals of the same value differ (random nonces), so equal secrets cannot be spotted in the database.
#[test]
fn sealing_twice_gives_different_envelopes() {
    let key = data_key();
    assert_ne!(key.seal(&ROW, b"same").unwrap(), key.seal(&ROW, b"same").unwrap());
}

/// A ciphertext copied to another row, another column or another table does not open there.
#[test]
fn a_swapped_value_does_not_open() {
    let key = data_key();
    let sealed = key.seal(&ROW, b"dev-1's key").unwrap();
    for elsewhere in [
        Binding { record: "dev-2", ..ROW },
        Binding { column: "secondary_symmetric_key", ..ROW },
        Binding { table: "enrollment_groups", ..ROW },
        // The parts are length-prefixed: moving a character from one part to the next is another binding.
        Binding { table: "individual_enrollment", column: "sprimary_symmetric_key", ..ROW },
        Binding { column: "primary_symmetric_keyd", record: "ev-1", ..ROW },
    ] {
        assert_eq!(key.open(&elsewhere, &sealed).unwrap_err(), EnvelopeError::Forged, "{elsewhere:?}");
    }
}

/// Another key does not open an envelope: by its id at once, or by authentication when the id was forged.
#[test]
fn the_wrong_key_does_not_open() {
    let key = data_key();
    let other = data_key();
    let sealed = key.seal(&ROW, b"secret").unwrap();
    assert_eq!(
        other.open(&ROW, &sealed).unwrap_err(),
        EnvelopeError::WrongKey { expected: other.id(), found: key.id() }
    );
    let impostor = AesKey::new(key.id(), &[7u8; 32]).unwrap();
    assert_eq!(open(&impostor, &ROW, &sealed).unwrap_err(), EnvelopeError::Forged);
}

/// Every byte of an envelope is authenticated: flipping any one fails (the version and the key id with their own
/// errors, the rest as forged).
#[test]
fn every_altered_byte_is_refused() {
    let key = data_key();
    let sealed = key.seal(&ROW, b"0123456789").unwrap();
    let bytes = URL_SAFE_NO_PAD.decode(sealed.strip_prefix(PREFIX).unwrap()).unwrap();
    for i in 0..bytes.len() {
        let mut altered = bytes.clone();
        altered[i] ^= 0x01;
        let text = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&altered));
        let err = key.open(&ROW, &text).unwrap_err();
        match i {
            0 => assert_eq!(err, EnvelopeError::UnknownVersion(VERSION ^ 1)),
            1..=8 => assert!(matches!(err, EnvelopeError::WrongKey { .. }), "byte {i}: {err:?}"),
            _ => assert_eq!(err, EnvelopeError::Forged, "byte {i}"),
        }
    }
}

/// Values that are not envelopes are told apart from envelopes that are broken.
#[test]
fn clear_text_and_malformed_envelopes_are_named() {
    let key = data_key();
    assert_eq!(key.open(&ROW, "c2VjcmV0IGtleSBpbiBjbGVhcg==").unwrap_err(), EnvelopeError::NotSealed);
    assert_eq!(key.open(&ROW, &format!("{PREFIX}***")).unwrap_err(), EnvelopeError::Malformed);
    assert_eq!(key.open(&ROW, PREFIX).unwrap_err(), EnvelopeError::Malformed);
    let sealed = key.seal(&ROW, b"").unwrap();
    assert_eq!(key.open(&ROW, &sealed).unwrap().as_slice(), b"");
    let short = &sealed[..sealed.len() - 4];
    assert_eq!(key.open(&ROW, short).unwrap_err(), EnvelopeError::Malformed);
    assert!(!is_sealed("zt-sealed"));
}

/// The data key opens with its master key only; rewrapping moves it to a new master key and leaves what it sealed
/// readable.
#[test]
fn the_data_key_is_wrapped_by_the_master_key_and_rewrapped_on_rotation() {
    let old = master();
    let (key, wrapped) = DataKey::generate_wrapped(&old).unwrap();
    let sealed = key.seal(&ROW, b"enrollment key").unwrap();

    let again = DataKey::unwrap(&old, key.id(), &wrapped).unwrap();
    assert_eq!(again.open(&ROW, &sealed).unwrap().as_slice(), b"enrollment key");

    let stranger = master();
    assert_eq!(
        DataKey::unwrap(&stranger, key.id(), &wrapped).unwrap_err(),
        EnvelopeError::WrongKey { expected: stranger.key_id(), found: old.key_id() }
    );
    // A wrapped key moved to another data key's row does not unwrap.
    let other_id = KeyId::random().unwrap();
    assert_eq!(DataKey::unwrap(&old, other_id, &wrapped).unwrap_err(), EnvelopeError::Forged);

    let new = master();
    let rewrapped = DataKey::rewrap(&old, &new, key.id(), &wrapped).unwrap();
    assert!(DataKey::unwrap(&old, key.id(), &rewrapped).is_err(), "the old master key no longer opens it");
    let rotated = DataKey::unwrap(&new, key.id(), &rewrapped).unwrap();
    assert_eq!(rotated.id(), key.id());
    assert_eq!(rotated.open(&ROW, &sealed).unwrap().as_slice(), b"enrollment key");
    assert!(DataKey::rewrap(&stranger, &new, key.id(), &wrapped).is_err());
}

/// A master key's text is base64 of 32 bytes; its id names it without revealing it.
#[test]
fn master_key_text_is_checked() {
    let (key, text) = MasterKey::generate().unwrap();
    let parsed = MasterKey::parse(&format!("{}\n", text.as_str())).unwrap();
    assert_eq!(parsed.key_id(), key.key_id());
    assert!(matches!(MasterKey::parse("not base64!"), Err(EnvelopeError::BadKey(_))));
    let short = MasterKey::parse(&STANDARD.encode([1u8; 16])).unwrap_err();
    assert!(short.to_string().contains("16 bytes"), "{short}");
    assert_ne!(MasterKey::parse(&STANDARD.encode([1u8; 32])).unwrap().key_id(), key.key_id());
    assert!(!format!("{key:?}").contains(text.as_str()));
    assert_eq!(KeyId::of_key(&[1u8; 32]), KeyId::of_key(&[1u8; 32]));
    assert_ne!(KeyId::of_key(&[1u8; 32]), KeyId::of_key(&[2u8; 32]));
}

/// Key ids print as 16 hex digits and parse back.
#[test]
fn key_ids_round_trip_as_hex() {
    let id = KeyId([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
    assert_eq!(id.to_string(), "0123456789abcdef");
    assert_eq!(KeyId::from_hex("0123456789abcdef"), Some(id));
    assert_eq!(KeyId::from_hex("0123456789abcde"), None);
    assert_eq!(KeyId::from_hex("0123456789abcdeg"), None);
}

/// Keys never show in `Debug`.
#[test]
fn keys_are_redacted_in_debug() {
    let key = AesKey::new(KeyId([9; 8]), &[0x41; 32]).unwrap();
    assert_eq!(format!("{key:?}"), "AesKey(0909090909090909, ..)");
    assert!(AesKey::new(KeyId([9; 8]), &[0x41; 16]).is_err());
}

proptest! {
    /// Any value round-trips in its place and opens nowhere else.
    #[test]
    fn any_value_round_trips_and_stays_in_its_place(
        value in proptest::collection::vec(any::<u8>(), 0..256),
        record in "[a-z0-9.-]{1,40}",
        other in "[a-z0-9.-]{1,40}",
    ) {
        let key = data_key();
        let here = Binding { record: &record, ..ROW };
        let sealed = key.seal(&here, &value).unwrap();
        let opened = key.open(&here, &sealed).unwrap();
        prop_assert_eq!(opened.as_slice(), value.as_slice());
        if other != record {
            let there = Binding { record: &other, ..ROW };
            prop_assert_eq!(key.open(&there, &sealed).unwrap_err(), EnvelopeError::Forged);
        }
    }

    /// Arbitrary text never panics the parser.
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let key = data_key();
        let _ = key.open(&ROW, &text);
        let _ = key.open(&ROW, &format!("{PREFIX}{text}"));
    }
}
