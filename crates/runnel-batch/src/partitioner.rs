//! Which partition a keyed record goes to.
//!
//! `partition_for_key(key, n) = (murmur2(key) & 0x7fffffff) % n`, with
//! Kafka's murmur2 (seed `0x9747b28c`), so a key lands on the same partition
//! as it would in Kafka with the default partitioner. The broker (for thin
//! clients that leave the partition to it) and runnel-client use this one
//! function; it is part of the API contract and must never change.

/// Kafka's 32-bit murmur2 of `data` (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition, in `0..partitions`, for a record with `key`.
///
/// # Panics
/// If `partitions` is 0 (a topic always has at least one partition).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors (UtilsTest.testMurmur2).
    #[test]
    fn matches_kafka() {
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (i, (key, want)) in cases.iter().enumerate() {
            assert_eq!(murmur2(key.as_bytes()), *want, "case {i}: {key:?}");
        }
    }

    #[test]
    fn stable_and_in_range() {
        for n in 1..20u32 {
            for k in 0..200u32 {
                let key = k.to_string();
                let p = partition_for_key(key.as_bytes(), n);
                assert!(p < n);
                assert_eq!(p, partition_for_key(key.as_bytes(), n));
            }
        }
        assert_eq!(partition_for_key(b"", 7), partition_for_key(b"", 7));
    }
}
