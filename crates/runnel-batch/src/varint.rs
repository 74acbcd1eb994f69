//! LEB128 varints (unsigned) and zigzag varints (signed), as in protobuf.

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends `v` zigzag-encoded.
pub(crate) fn put_varint(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

/// Reads an unsigned varint from `buf[*pos..]`, advancing `pos`.
/// `None` if the buffer ends first or the varint is longer than 10 bytes.
pub(crate) fn get_uvarint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Reads a zigzag varint.
pub(crate) fn get_varint(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let u = get_uvarint(buf, pos)?;
    Some(((u >> 1) as i64) ^ -((u & 1) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn uvarint_round_trip(v in any::<u64>()) {
            let mut buf = Vec::new();
            put_uvarint(&mut buf, v);
            let mut pos = 0;
            prop_assert_eq!(get_uvarint(&buf, &mut pos), Some(v));
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn varint_round_trip(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut pos = 0;
            prop_assert_eq!(get_varint(&buf, &mut pos), Some(v));
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut pos = 0;
            let _ = get_uvarint(&bytes, &mut pos);
            prop_assert!(pos <= bytes.len());
        }
    }

    #[test]
    fn overlong_is_rejected() {
        let buf = [0xffu8; 11];
        assert_eq!(get_uvarint(&buf, &mut 0), None);
        // 10th byte may only carry one bit.
        let mut buf = vec![0xffu8; 9];
        buf.push(0x02);
        assert_eq!(get_uvarint(&buf, &mut 0), None);
    }
}

/// Bytes `put_uvarint` writes for `v`.
pub(crate) fn uvarint_len(v: u64) -> usize {
    // 7 bits per byte; 0 still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes `put_varint` writes for `v` (zigzag).
pub(crate) fn varint_len(v: i64) -> usize {
    uvarint_len(((v << 1) ^ (v >> 63)) as u64)
}

#[cfg(test)]
mod len_tests {
    use super::*;

    #[test]
    fn lengths_match_encodings() {
        let mut cases: Vec<i64> = vec![0, 1, -1, 63, -64, 64, -65, i64::MAX, i64::MIN];
        cases.extend((0..63).map(|b| 1i64 << b));
        cases.extend((0..63).map(|b| -(1i64 << b)));
        for (i, v) in cases.into_iter().enumerate() {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(varint_len(v), buf.len(), "case {i}: varint {v}");
            let u = v as u64;
            let mut buf = Vec::new();
            put_uvarint(&mut buf, u);
            assert_eq!(uvarint_len(u), buf.len(), "case {i}: uvarint {u}");
        }
    }
}
