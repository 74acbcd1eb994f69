//! Segment file names: the zero-padded base offset plus an extension.

use std::path::{Path, PathBuf};

/// Extension of segment data files.
pub const LOG_EXT: &str = "log";
/// Extension of sparse offset index files.
pub const INDEX_EXT: &str = "index";
/// Extension of time index files.
pub const TIME_INDEX_EXT: &str = "timeindex";
/// Suffix of files scheduled for deletion (resolved at startup).
pub const DELETED_SUFFIX: &str = ".deleted";
/// Suffix of state files being written (resolved at startup).
pub const TMP_SUFFIX: &str = ".tmp";

/// The file name of a segment file: `00000000000000000042.log`.
pub fn segment_file_name(base_offset: u64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// The path of a segment file in `dir`.
pub fn segment_path(dir: &Path, base_offset: u64, ext: &str) -> PathBuf {
    dir.join(segment_file_name(base_offset, ext))
}

/// Parses a segment file name back into `(base_offset, extension)`.
/// `None` for anything that is not exactly 20 digits, a dot and an extension.
pub fn parse_segment_file_name(name: &str) -> Option<(u64, &str)> {
    let (digits, ext) = name.split_once('.')?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) || ext.is_empty() {
        return None;
    }
    Some((digits.parse().ok()?, ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_parse_pair() {
        let cases: &[(u64, &str, &str)] = &[
            (0, LOG_EXT, "00000000000000000000.log"),
            (42, INDEX_EXT, "00000000000000000042.index"),
            (u64::MAX, TIME_INDEX_EXT, "18446744073709551615.timeindex"),
        ];
        for (i, (base, ext, name)) in cases.iter().enumerate() {
            assert_eq!(segment_file_name(*base, ext), *name, "case {i}");
            assert_eq!(
                parse_segment_file_name(name),
                Some((*base, *ext)),
                "case {i}"
            );
        }
    }

    #[test]
    fn rejects_other_names() {
        for (i, name) in [
            "0.log",
            "000000000000000000001.log",
            "0000000000000000000a.log",
            "00000000000000000000.",
            "00000000000000000000",
            "partition.state",
            "99999999999999999999.log",
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(parse_segment_file_name(name), None, "case {i}: {name}");
        }
        assert_eq!(
            parse_segment_file_name("00000000000000000007.log.deleted"),
            Some((7, "log.deleted"))
        );
    }
}
