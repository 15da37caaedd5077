//! How many activation blobs one core builds per second (issue #7's target: 5,000): each with fresh random
//! secrets, for the EK and SRK of `docs/protocol/tpm-activation.md`. `cargo run --release --example activation_rate [SECONDS]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use zerotouch_tpm::{Public, build_activation_blob};

const EK: &str = concat!(
    "013a0001000b000300b20020837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa00060080004300100800000000000100bd05084b",
    "4648a29051819a7fc506efde0d4812331cbdc24a725e80d360d1b8ef4ddb14f0003326747481b62658b9ffa0157fa3e7582859b832f3ae83002e494cc0084e8c",
    "0c6c551d3c1c96e7e799b1efb8d29027bab7ff39197d47683dbb75b37ef34214c597e794abda87f803e4089df801edc71b17e6d7b2405c95099a72f1f5e0a56a",
    "35ac737ade153390c755d9dca9b6a94ac4b36d9bc30867901c868641907f42985091e0681e2354c860f0c0a48efaa02a657b5c8165136b84597382b4854efdf0",
    "e030ef58c06e7804374d8663ef29afa63a587a56ce0317507149cf7248eb1d4bcb7d58f1921b641c9a7dad18895d2fa12718d49ced547eb8300d357f",
);
const SRK: &str = concat!(
    "011a0001000b00030472000000060080004300100800000000000100bb9db4ee2e7eda3a05336be358b67f392b7ca197cb1c96c822c605b77b92f250162a0bfb",
    "5d286c0edbf313190941706be74812df59a1f48c1aff8e8869c47eec44e4711f4507c34f4095a9b8b879594ad8cf9ffd15d5a8b267314d0f424d73948e80a5b7",
    "958ba7fd428bd554e76cfcd3857b73dffff56735eb7097fe872f627adb76c6249fa3c48e0027345e29e18a981bbe82a94e1575f960534fe10636172088ed01e4",
    "ca0d7577d128b3c0971da118873eedd650ff713e5906c5fef8e06875f8da4f8f31c6c41bcdeaf9d556d3ddfec3ef8d4445605c7e612a12962ad4c29261071793",
    "0d632e21281826a0dae651f338d5fdfe28cdb62214d7851a2b2a891d",
);

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let ek = Public::parse(&hex::decode(EK).unwrap()).unwrap();
    let srk = Public::parse(&hex::decode(SRK).unwrap()).unwrap();
    let key = [0x5a; 32];
    let start = Instant::now();
    let mut built = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..100 {
            std::hint::black_box(build_activation_blob(&ek, &srk, &key).unwrap());
        }
        built += 100;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("activation blobs: {built} in {elapsed:.2} s on one thread = {:.0} per second", built as f64 / elapsed);
}
