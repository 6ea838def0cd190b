//! The text of a Kubernetes Event (`note` in events.k8s.io/v1, `message` in core/v1) within
//! what the API server accepts.

/// Longest Event note the Events API accepts, in bytes.
pub const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// `note` cut to at most [`MAX_EVENT_NOTE_BYTES`], on a character boundary, ending in `...`
/// when cut.
pub fn fit_event_note(mut note: String) -> String {
    if note.len() > MAX_EVENT_NOTE_BYTES {
        let mut end = MAX_EVENT_NOTE_BYTES - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_notes_are_kept_and_long_ones_cut_on_a_character() {
        assert_eq!(fit_event_note("as is".into()), "as is");
        let exact = "a".repeat(MAX_EVENT_NOTE_BYTES);
        assert_eq!(fit_event_note(exact.clone()), exact);
        // Two-byte characters put byte 1021 inside one: the cut moves back to its start.
        let long = "é".repeat(MAX_EVENT_NOTE_BYTES);
        let cut = fit_event_note(long.clone());
        assert!(cut.len() <= MAX_EVENT_NOTE_BYTES, "{}", cut.len());
        assert!(cut.ends_with("...") && long.starts_with(cut.trim_end_matches("...")));
        assert_eq!(cut.len(), MAX_EVENT_NOTE_BYTES - 1);
    }
}
