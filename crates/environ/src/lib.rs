//! Takes a secret out of the process environment: reads a variable and removes it, so that child processes do not
//! inherit it and later code cannot read it again (issue #17: `ZEROTOUCH_MASTER_KEY`).
//!
//! Removing a variable is `unsafe` since Rust 2024: the C library's environment is not thread-safe, so it must not
//! change while another thread reads it. [`take_before_threads`] is therefore called once, first thing in the
//! binary's `main`, before the runtime or any other thread exists; the token it needs, [`SingleThreaded`], can only
//! be made there.
//!
//! What removal does not do: the kernel keeps the environment the process was started with
//! (`/proc/PID/environ`, readable by the same user and root), and the C library does not erase it. An operator who
//! needs the key out of that view uses `--master-key-file` or a PKCS#11 token.
#![deny(missing_docs, unreachable_pub)]

use zeroize::Zeroizing;

/// Proof, by the caller, that no other thread exists yet. Made only by [`SingleThreaded::at_start_of_main`].
#[derive(Debug)]
pub struct SingleThreaded(());

impl SingleThreaded {
    /// The caller promises that this runs at the start of `main`, before any thread is spawned (no runtime, no
    /// logging thread, nothing that reads the environment in the background).
    pub fn at_start_of_main() -> Self {
        Self(())
    }
}

/// Reads the variable `name` and removes it from the environment; `None` if it is not set. A value that is not
/// UTF-8 is removed too and returned lossily (the caller's parser refuses it).
pub fn take_before_threads(name: &str, _proof: &SingleThreaded) -> Option<Zeroizing<String>> {
    let value = std::env::var_os(name)?;
    let text = Zeroizing::new(value.to_string_lossy().into_owned());
    drop(Zeroizing::new(value.into_encoded_bytes()));
    #[allow(unsafe_code)]
    // SAFETY: `SingleThreaded` says that this runs before any other thread exists, so nothing reads or writes the
    // environment concurrently (the condition `std::env::remove_var` documents).
    unsafe {
        std::env::remove_var(name);
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A taken variable is returned once and is gone afterwards. (Unit tests run in threads: the variable's name is
    /// this test's own, so no other test reads it.)
    #[test]
    fn a_taken_variable_is_gone() {
        let name = "ZEROTOUCH_ENVIRON_TEST_TAKE";
        #[allow(unsafe_code)]
        // SAFETY: no other test reads or writes this variable.
        unsafe {
            std::env::set_var(name, "s3cret");
        }
        let proof = SingleThreaded::at_start_of_main();
        assert_eq!(take_before_threads(name, &proof).unwrap().as_str(), "s3cret");
        assert!(std::env::var_os(name).is_none());
        assert!(take_before_threads(name, &proof).is_none());
    }
}
