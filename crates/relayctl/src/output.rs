//! Plain-text tables and time/duration formatting for command output.

use std::time::{Duration, UNIX_EPOCH};

/// Prints a left-aligned table with a header row to stdout. No trailing spaces.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(headers, rows));
}

fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push('\n');
    }
    out
}

/// Unix milliseconds as RFC 3339 UTC with seconds precision.
pub fn time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => format!("{ms} ms"),
    }
}

/// [`time`] or `-`.
pub fn opt_time(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), time)
}

/// Milliseconds as a human duration (`1m 30s`); negative values as raw milliseconds.
pub fn duration_ms(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => humantime::format_duration(Duration::from_millis(ms)).to_string(),
        Err(_) => format!("{ms}ms"),
    }
}

pub fn opt_text(s: Option<&str>) -> &str {
    s.unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let rows = vec![
            vec!["acme".to_owned(), "1".to_owned()],
            vec!["b".to_owned(), "22".to_owned()],
        ];
        assert_eq!(
            render_table(&["NAME", "N"], &rows),
            "NAME  N\nacme  1\nb     22\n"
        );
    }

    #[test]
    fn formats_times_and_durations() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(opt_time(None), "-");
        assert_eq!(duration_ms(90_000), "1m 30s");
    }
}
