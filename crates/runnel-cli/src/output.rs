//! The output formats shared by commands, and how raw bytes are shown.

use std::fmt::Write as _;

use clap::ValueEnum;
use serde::Serialize;

/// How a command prints its results (`--output`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// Lines for people.
    #[default]
    Text,
    /// JSON for programs (see each command's help for the shape).
    Json,
}

/// How [`Shown::text`] encodes the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
    /// The bytes are UTF-8 text.
    Utf8,
    /// Lowercase hex, two digits per byte.
    Hex,
}

/// Bytes made printable: text when they are text, hex otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Shown {
    pub(crate) text: String,
    pub(crate) encoding: Encoding,
}

impl Shown {
    /// For a terminal: printable UTF-8 (no control characters but tab,
    /// newline and carriage return) as text, anything else as hex.
    pub(crate) fn for_terminal(bytes: &[u8]) -> Shown {
        match std::str::from_utf8(bytes) {
            Ok(s)
                if s.chars()
                    .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r')) =>
            {
                Shown::utf8(s)
            }
            _ => Shown::hex(bytes),
        }
    }

    /// For JSON, which escapes any character: UTF-8 as text, else hex.
    pub(crate) fn for_json(bytes: &[u8]) -> Shown {
        match std::str::from_utf8(bytes) {
            Ok(s) => Shown::utf8(s),
            Err(_) => Shown::hex(bytes),
        }
    }

    fn utf8(s: &str) -> Shown {
        Shown {
            text: s.to_string(),
            encoding: Encoding::Utf8,
        }
    }

    fn hex(bytes: &[u8]) -> Shown {
        let mut text = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _infallible = write!(text, "{b:02x}");
        }
        Shown {
            text,
            encoding: Encoding::Hex,
        }
    }

    /// The form used in text output: a quoted, escaped string, or `0x...`.
    pub(crate) fn quoted(&self) -> String {
        match self.encoding {
            Encoding::Utf8 => format!("{:?}", self.text),
            Encoding::Hex => format!("0x{}", self.text),
        }
    }
}

/// Lays out `rows` under `headers` in columns two spaces apart, each as wide
/// as its widest cell; the last column is not padded.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0);
                let _infallible = write!(line, "{cell:<pad$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_as_text_or_hex() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"hello", "\"hello\"", "\"hello\""),
            (b"", "\"\"", "\"\""),
            (b"two\nlines", "\"two\\nlines\"", "\"two\\nlines\""),
            (b"bell\x07", "0x62656c6c07", "\"bell\\u{7}\""),
            (&[0xff, 0x00, 0x10], "0xff0010", "0xff0010"),
            ("caf\u{e9}".as_bytes(), "\"caf\u{e9}\"", "\"caf\u{e9}\""),
        ];
        for (i, (bytes, terminal, json)) in cases.iter().enumerate() {
            assert_eq!(Shown::for_terminal(bytes).quoted(), *terminal, "case {i}");
            assert_eq!(Shown::for_json(bytes).quoted(), *json, "case {i}");
        }
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["orders".to_string(), "12".to_string(), "3".to_string()],
            vec!["a".to_string(), "1".to_string(), "1".to_string()],
        ];
        let text = table(&["NAME", "PARTITIONS", "REPLICATION"], &rows);
        assert_eq!(
            text,
            "NAME    PARTITIONS  REPLICATION\norders  12          3\na       1           1\n"
        );
        assert_eq!(table(&["A", "B"], &[]), "A  B\n");
    }
}
