//! Bounds text stored in the API server: command output in `.status`, with a visible marker
//! when it was cut, and condition messages and Event notes by their byte limits.
//!
//! SSM itself returns at most 24,000 characters of stdout and 8,000 of stderr; the operator
//! keeps at most `--max-output-chars` of each so that thousands of resources stay cheap for
//! etcd, watch caches and `kubectl get -o yaml`.

/// Appended when output was cut. It counts toward the bound.
pub const CUT_MARKER: &str = "\n[ssm-operator: output cut; full text in SSM]";

/// `text` unchanged if it has at most `max_chars` characters; else its first characters plus
/// [`CUT_MARKER`], `max_chars` characters in all (just the marker's start if `max_chars` is
/// smaller than the marker).
pub fn bounded(text: &str, max_chars: usize) -> String {
    let Some((cut_at, _)) = text.char_indices().nth(max_chars) else {
        return text.to_string();
    };
    let marker_chars = CUT_MARKER.chars().count();
    if max_chars <= marker_chars {
        return CUT_MARKER.chars().take(max_chars).collect();
    }
    let keep = max_chars - marker_chars;
    let keep_end = text
        .char_indices()
        .nth(keep)
        .map_or(cut_at, |(index, _)| index);
    format!("{}{CUT_MARKER}", &text[..keep_end])
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn cut_to_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_verbatim() {
        assert_eq!(bounded("hello\n", 4000), "hello\n");
        assert_eq!(bounded("", 10), "");
        let exact = "x".repeat(100);
        assert_eq!(bounded(&exact, 100), exact);
    }

    #[test]
    fn long_output_is_cut_to_the_bound_with_the_marker() {
        let out = bounded(&"y".repeat(24_000), 4000);
        assert_eq!(out.chars().count(), 4000);
        assert!(out.ends_with(CUT_MARKER));
        assert!(out.starts_with("yyyy"));
    }

    #[test]
    fn multibyte_characters_are_counted_as_characters_and_never_split() {
        let out = bounded(&"é".repeat(500), 100);
        assert_eq!(out.chars().count(), 100);
        assert!(out.starts_with("éé"));
    }

    #[test]
    fn a_bound_below_the_marker_length_still_marks_the_cut() {
        assert_eq!(
            bounded("abcdefghij", 5),
            CUT_MARKER.chars().take(5).collect::<String>()
        );
    }
}
