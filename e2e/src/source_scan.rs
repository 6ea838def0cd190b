//! A small reader of the workspace's Rust sources for the guards in `tests/test_scheme.rs`:
//! which test functions connect to the local control plane (directly or through helpers of
//! their own test crate), and what they are marked with. Text-level, not a parser: comments
//! and literal contents are blanked first so that neither can look like code, then `fn`
//! items are found with their attributes and bodies.

use std::ops::Range;

/// One `fn` item with a body.
#[derive(Debug, Clone)]
pub struct FnItem {
    pub name: String,
    /// The type of the `impl` block it is in (`Setup` for `impl Setup { fn new() }`).
    pub owner: Option<String>,
    /// Whether it takes `self` (a method, called as `.name(`).
    pub takes_self: bool,
    /// The attributes above it, as written (`#[tokio::test]`, `#[ignore = "..."]`).
    pub attributes: Vec<String>,
    /// The body, comments and literal contents blanked.
    pub body: String,
    /// 1-based line of the `fn` keyword.
    pub line: usize,
}

impl FnItem {
    /// `#[test]`, `#[tokio::test]` or `#[tokio::test(...)]`.
    pub fn is_test(&self) -> bool {
        self.attributes.iter().any(|a| {
            let a = a.trim_start_matches("#[").trim_start();
            a.starts_with("test]") || a.starts_with("tokio::test")
        })
    }

    /// The reason of its `#[ignore = "..."]`, if it has one.
    pub fn ignore_reason(&self) -> Option<&str> {
        self.attributes.iter().find_map(|a| {
            let rest = a.strip_prefix("#[")?.trim_start().strip_prefix("ignore")?;
            let rest = rest.trim_start().strip_prefix('=')?.trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest.rsplit_once('"').map_or(rest, |(reason, _)| reason))
        })
    }

    /// How a call to it reads: `Owner::name` for an associated function, `.name(` for a
    /// method, `name` for a free function.
    pub fn call_pattern(&self) -> String {
        match (&self.owner, self.takes_self) {
            (_, true) => format!(".{}(", self.name),
            (Some(owner), false) => format!("{owner}::{}", self.name),
            (None, false) => self.name.clone(),
        }
    }

    /// Whether the body names `word` as a whole identifier or path (`TestCluster::connect`);
    /// inside `impl Owner`, `Self::name` names `Owner::name`.
    pub fn mentions(&self, word: &str) -> bool {
        mentions(&self.body, word)
            || self.owner.as_deref().is_some_and(|owner| {
                word.strip_prefix(owner)
                    .and_then(|rest| rest.strip_prefix("::"))
                    .is_some_and(|name| mentions(&self.body, &format!("Self::{name}")))
            })
    }
}

/// Whether `code` holds `word` as a whole: not preceded or followed by an identifier
/// character that would make it part of a longer name.
pub fn mentions(code: &str, word: &str) -> bool {
    let bytes = code.as_bytes();
    // Only an identifier character at an end of `word` needs a boundary there (`.run(` does
    // not).
    let (first, last) = (word.bytes().next(), word.bytes().last());
    code.match_indices(word).any(|(at, _)| {
        let before = at.checked_sub(1).and_then(|i| bytes.get(i));
        let after = bytes.get(at + word.len());
        let glued_before = first.is_some_and(is_ident) && before.is_some_and(|b| is_ident(*b));
        let glued_after = last.is_some_and(is_ident) && after.is_some_and(|b| is_ident(*b));
        !glued_before && !glued_after
    })
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `src` with every comment and the contents of every string and char literal replaced by
/// spaces (line breaks kept), byte for byte: offsets into it are offsets into `src`.
pub fn blank(src: &str) -> String {
    let s = src.as_bytes();
    let mut out = s.to_vec();
    let mut i = 0;
    let blank_range = |out: &mut Vec<u8>, r: Range<usize>| {
        for b in &mut out[r] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    while i < s.len() {
        let prev_ident = i > 0 && is_ident(s[i - 1]);
        match s[i] {
            b'/' if s.get(i + 1) == Some(&b'/') => {
                let end = s[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(s.len(), |p| i + p);
                blank_range(&mut out, i..end);
                i = end;
            }
            b'/' if s.get(i + 1) == Some(&b'*') => {
                let (mut depth, mut j) = (1, i + 2);
                while j < s.len() && depth > 0 {
                    if s[j] == b'/' && s.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if s[j] == b'*' && s.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                blank_range(&mut out, i..j);
                i = j;
            }
            b'r' | b'b' if !prev_ident && raw_string_start(s, i).is_some() => {
                let (hashes, open) = raw_string_start(s, i).unwrap_or((0, i));
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let end = s[open + 1..]
                    .windows(close.len())
                    .position(|w| w == close.as_slice())
                    .map_or(s.len(), |p| open + 1 + p);
                blank_range(&mut out, open + 1..end);
                i = (end + close.len()).min(s.len());
            }
            b'"' => {
                let mut j = i + 1;
                while j < s.len() && s[j] != b'"' {
                    j += if s[j] == b'\\' { 2 } else { 1 };
                }
                let end = j.min(s.len());
                blank_range(&mut out, i + 1..end);
                i = end + 1;
            }
            b'\'' if !prev_ident || byte_prefix(s, i) => match char_literal_end(s, i) {
                Some(end) => {
                    blank_range(&mut out, i + 1..end);
                    i = end + 1;
                }
                None => i += 1, // a lifetime or a label
            },
            _ => i += 1,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// At a `'` or `"`: whether it follows a lone `b` (`b'{'`, `b"}"`).
fn byte_prefix(s: &[u8], i: usize) -> bool {
    i >= 1 && s[i - 1] == b'b' && (i < 2 || !is_ident(s[i - 2]))
}

/// At `i`: `r"`, `r#"`, `br"`, ... → (number of `#`, index of the opening `"`).
fn raw_string_start(s: &[u8], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if s.get(j) == Some(&b'b') {
        j += 1;
    }
    if s.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = s[j..].iter().take_while(|&&b| b == b'#').count();
    (s.get(j + hashes) == Some(&b'"')).then_some((hashes, j + hashes))
}

/// At a `'`: the index of the closing `'` of a char literal, `None` for a lifetime.
fn char_literal_end(s: &[u8], i: usize) -> Option<usize> {
    if s.get(i + 1) == Some(&b'\\') {
        // Past the escaped char, so that `'\''` ends at its last quote.
        let close = s.get(i + 3..)?.iter().take(12).position(|&b| b == b'\'')?;
        return Some(i + 3 + close);
    }
    // One char of 1 to 4 UTF-8 bytes, then the closing quote.
    let first = *s.get(i + 1)?;
    let width = match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    };
    (s.get(i + 1 + width) == Some(&b'\'')).then_some(i + 1 + width)
}

/// Every `fn` item with a body in `src`, nested ones included.
pub fn functions(src: &str) -> Vec<FnItem> {
    let code = blank(src);
    let b = code.as_bytes();
    let impls = impl_blocks(&code);
    let mut out = Vec::new();
    for (at, _) in code.match_indices("fn") {
        let before_ok = at == 0 || !is_ident(b[at - 1]);
        if !before_ok || !b.get(at + 2).is_some_and(|c| c.is_ascii_whitespace()) {
            continue;
        }
        let name_start = at
            + 2
            + b[at + 2..]
                .iter()
                .take_while(|c| c.is_ascii_whitespace())
                .count();
        let name_len = b[name_start..].iter().take_while(|&&c| is_ident(c)).count();
        if name_len == 0 {
            continue;
        }
        let Some(open) = body_start(b, name_start + name_len) else {
            continue;
        };
        let close = matching_brace(b, open);
        let owner = impls
            .iter()
            .filter(|(r, _)| r.contains(&at))
            .min_by_key(|(r, _)| r.len())
            .map(|(_, owner)| owner.clone());
        out.push(FnItem {
            name: code[name_start..name_start + name_len].to_string(),
            owner,
            takes_self: mentions(&code[name_start..open], "self"),
            attributes: attributes_before(src, b, at),
            body: code[open..close].to_string(),
            line: 1 + b[..at].iter().filter(|&&c| c == b'\n').count(),
        });
    }
    out
}

/// Every `impl` block: its body's range and the type it is for (`impl<T> Trait for Foo<T>` →
/// `Foo`).
fn impl_blocks(code: &str) -> Vec<(Range<usize>, String)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    for (at, _) in code.match_indices("impl") {
        let boundary =
            (at == 0 || !is_ident(b[at - 1])) && b.get(at + 4).is_some_and(|c| !is_ident(*c));
        let Some(open) = boundary.then(|| body_start(b, at + 4)).flatten() else {
            continue;
        };
        let mut head = code[at + 4..open].trim();
        if head.starts_with('<') {
            // Skip the impl's own generics.
            let mut depth = 0;
            for (k, c) in head.char_indices() {
                match c {
                    '<' => depth += 1,
                    '>' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    head = head[k + 1..].trim_start();
                    break;
                }
            }
        }
        let head = head.rsplit_once(" for ").map_or(head, |(_, ty)| ty.trim());
        let ty: String = head
            .chars()
            .take_while(|c| *c == ':' || c.is_alphanumeric() || *c == '_')
            .collect();
        let ty = ty.rsplit("::").next().unwrap_or_default().to_string();
        if !ty.is_empty() {
            out.push((open..matching_brace(b, open), ty));
        }
    }
    out
}

/// The `{` opening the body of the `fn` whose signature starts at `from`, `None` for a
/// declaration without one (`;`). Brackets and parentheses are skipped (`[u8; 4]`).
fn body_start(b: &[u8], from: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (k, &c) in b.iter().enumerate().skip(from) {
        match c {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth -= 1,
            b'{' if depth == 0 => return Some(k),
            b';' if depth == 0 => return None,
            _ => {}
        }
    }
    None
}

fn matching_brace(b: &[u8], open: usize) -> usize {
    let mut depth = 0i32;
    for (k, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    b.len()
}

/// The attributes written above the `fn` keyword at `at` (past `pub`, `pub(crate)`,
/// `async`, `const`, `unsafe`), from the original source so that reasons read as written.
fn attributes_before(src: &str, b: &[u8], at: usize) -> Vec<String> {
    let mut attrs = Vec::new();
    let mut k = at;
    loop {
        while k > 0 && b[k - 1].is_ascii_whitespace() {
            k -= 1;
        }
        if k == 0 {
            break;
        }
        if b[k - 1] == b']' || b[k - 1] == b')' {
            let (open_c, close_c) = if b[k - 1] == b']' {
                (b'[', b']')
            } else {
                (b'(', b')')
            };
            let mut depth = 0i32;
            let mut j = k;
            while j > 0 {
                j -= 1;
                if b[j] == close_c {
                    depth += 1;
                } else if b[j] == open_c {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
            }
            if close_c == b']' {
                if j == 0 || b[j - 1] != b'#' {
                    break;
                }
                attrs.push(src[j - 1..k].to_string());
                k = j - 1;
            } else {
                // `pub(crate)`: the parentheses, then `pub`.
                k = j;
            }
            continue;
        }
        let word_len = b[..k].iter().rev().take_while(|&&c| is_ident(c)).count();
        let word = &src[k - word_len..k];
        if matches!(word, "pub" | "async" | "const" | "unsafe") {
            k -= word_len;
            continue;
        }
        break;
    }
    attrs.reverse();
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r##"
//! fn not_a_function() { TestCluster::connect() }
use x::TestCluster;

/// A helper: fn in a doc comment.
async fn cluster() -> TestCluster {
    let s = "fn fake() { } }"; let c = '}'; let r = r#"} " }"#; let q = ['\'', '{'];
    let b = [b'{', b'}'];
    TestCluster::connect().await.unwrap()
}

fn bound<'a>(x: &'a str) -> [u32; 3] { [0; 3] }

#[tokio::test]
#[ignore = "needs the local control plane: bash scripts/test.sh"]
async fn connects() {
    let _ = cluster().await;
}

#[test]
pub(crate) fn pure() {
    /* cluster() in a comment */ let _ = bound("}");
}
"##;

    #[test]
    fn blanking_keeps_offsets_and_hides_comments_and_literals() {
        let code = blank(SAMPLE);
        assert_eq!(code.len(), SAMPLE.len());
        assert!(!code.contains("not_a_function"));
        assert!(!code.contains("fake"));
        assert!(code.contains("let c = ' ';"));
        assert_eq!(code.lines().count(), SAMPLE.lines().count());
    }

    #[test]
    fn functions_are_found_with_their_attributes_and_bodies() {
        let fns = functions(SAMPLE);
        let names: Vec<&str> = fns.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["cluster", "bound", "connects", "pure"]);
        let connects = &fns[2];
        assert!(connects.is_test());
        assert_eq!(
            connects.ignore_reason(),
            Some("needs the local control plane: bash scripts/test.sh")
        );
        assert!(connects.mentions("cluster"));
        assert!(fns[0].mentions("TestCluster::connect"));
        assert!(!fns[0].is_test());
        let pure = &fns[3];
        assert!(pure.is_test() && pure.ignore_reason().is_none());
        assert!(!pure.mentions("cluster"), "a comment is not a call");
        assert!(!fns[1].mentions("cluster"));
        assert_eq!(fns[0].call_pattern(), "cluster");
    }

    #[test]
    fn functions_in_impl_blocks_know_their_type() {
        let src = "impl<K: Clone> Setup<K> where K: Send { async fn new() -> Self { x } fn run(&self) {} }\nimpl std::fmt::Display for Node { fn fmt(&self) {} }\nfn free() {}";
        let patterns: Vec<String> = functions(src).iter().map(FnItem::call_pattern).collect();
        assert_eq!(patterns, ["Setup::new", ".run(", ".fmt(", "free"]);
    }

    #[test]
    fn self_in_an_impl_names_its_owner() {
        let items = functions("impl Stand { fn start() { Self::start_as() } fn start_as() {} }");
        assert!(items[0].mentions("Stand::start_as"));
        assert!(!items[0].mentions("Other::start_as"));
    }

    #[test]
    fn mentions_wants_whole_identifiers() {
        assert!(mentions("a.cluster()", "cluster"));
        assert!(!mentions("a.clusters()", "cluster"));
        assert!(!mentions("test_cluster()", "cluster"));
        assert!(mentions("served.run(x)", ".run("));
        assert!(!mentions("served.run_all(x)", ".run("));
    }
}
