//! argon2id with working memory that goes back to the operating system after every call.
//!
//! glibc serves an allocation above its mmap threshold with `mmap` and unmaps it on free,
//! but it raises that threshold to the size of the first such block freed (up to 32 MiB on
//! 64-bit). After the first 19 MiB argon2 block, every later one came from the heap of the
//! thread that ran it and stayed there: 19 MiB per malloc arena that ever ran a check. Here
//! the working buffer's capacity is above the threshold's maximum, so it is always mmapped
//! and unmapped when dropped; only the blocks argon2 uses are ever touched, so a running
//! check is resident for m_cost KiB, as before. No `unsafe` and no allocator tuning needed.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{self, Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Above glibc's largest dynamic mmap threshold (`DEFAULT_MMAP_THRESHOLD_MAX`, 32 MiB on
/// 64-bit), so the allocation is always a mapping of its own.
const ALWAYS_MAPPED_BYTES: usize = 32 * 1024 * 1024 + 64 * 1024;

/// Zeroed working memory for `blocks` blocks, in an allocation glibc always mmaps.
fn working_memory(blocks: usize) -> Vec<Block> {
    let capacity = blocks.max(ALWAYS_MAPPED_BYTES / Block::SIZE);
    let mut memory = Vec::with_capacity(capacity);
    memory.resize(blocks, Block::default());
    memory
}

/// The raw argon2 output of `password` and `salt` into `out`.
fn compute(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> password_hash::Result<()> {
    let memory = working_memory(argon.params().block_count());
    argon.hash_password_into_with_memory(password, salt, out, memory)?;
    Ok(())
}

/// A new argon2id PHC string (crate defaults: v19, m=19456 KiB, t=2, p=1) of `password`.
pub(crate) fn hash(password: &[u8]) -> password_hash::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let argon = Argon2::default();
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buf)?;
    let len = argon
        .params()
        .output_len()
        .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    let output = Output::init_with(len, |out| compute(&argon, password, salt_bytes, out))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon.params())?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` hashes to `phc`: its output recomputed with the PHC string's
/// algorithm, version, parameters and salt, compared in constant time (`Output`'s `==`).
pub(crate) fn verify(phc: &PasswordHash<'_>, password: &[u8]) -> password_hash::Result<bool> {
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        return Err(password_hash::Error::PhcStringField);
    };
    let algorithm = Algorithm::try_from(phc.algorithm)?;
    let version = phc
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let argon = Argon2::new(algorithm, version, Params::try_from(phc)?);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let computed = Output::init_with(expected.len(), |out| {
        compute(&argon, password, salt_bytes, out)
    })?;
    Ok(computed == expected)
}

#[cfg(test)]
mod tests {
    use argon2::PasswordVerifier;

    use super::*;

    #[test]
    fn agrees_with_the_argon2_crate() -> password_hash::Result<()> {
        let phc = hash(b"correct horse")?;
        let parsed = PasswordHash::new(&phc)?;
        assert!(verify(&parsed, b"correct horse")?);
        assert!(!verify(&parsed, b"wrong horse")?);
        Argon2::default().verify_password(b"correct horse", &parsed)?;

        // And the other way round, with parameters other than ours.
        let params = Params::new(1024, 1, 2, Some(24))?;
        let salt = SaltString::generate(&mut OsRng);
        let theirs = argon2::PasswordHasher::hash_password(
            &Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            b"pw",
            &salt,
        )?
        .to_string();
        let parsed = PasswordHash::new(&theirs)?;
        assert!(verify(&parsed, b"pw")?);
        assert!(!verify(&parsed, b"px")?);
        Ok(())
    }

    /// Resident memory of this process in KiB (Linux).
    fn rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// With the argon2 crate's own allocation, the first freed block raised glibc's mmap
    /// threshold and every later check left 19 MiB in the heap of each thread that ran one.
    #[test]
    fn working_memory_is_returned_after_checks() -> password_hash::Result<()> {
        let phc = hash(b"correct horse")?;
        let Some(before) = rss_kib() else {
            return Ok(()); // not Linux
        };
        for _ in 0..4 {
            let phc = phc.clone();
            let checked = std::thread::spawn(move || -> password_hash::Result<()> {
                let parsed = PasswordHash::new(&phc)?;
                for _ in 0..3 {
                    verify(&parsed, b"correct horse")?;
                }
                Ok(())
            })
            .join();
            assert!(matches!(checked, Ok(Ok(()))));
        }
        // Other tests of this binary may be hashing right now: wait (bounded) for a sample
        // without them. Memory kept in a heap never comes back, so this waits in vain then.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut after = rss_kib().unwrap_or(before);
        while after.saturating_sub(before) >= 12 * 1024 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            after = after.min(rss_kib().unwrap_or(after));
        }
        assert!(
            after.saturating_sub(before) < 12 * 1024,
            "RSS grew from {before} to {after} KiB over 12 checks on 4 threads"
        );
        Ok(())
    }
}
