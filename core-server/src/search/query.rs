//! What a search asks for, checked before any work: the query text (bounded
//! in length and nesting, read as tantivy syntax or as plain words), the page
//! cursor, and the order hits come in (newest detection first, det_oid
//! breaking ties, so the order is total and a cursor is a position in it).

use tantivy::{
    collector::{sort_key::NaturalComparator, SegmentSortKeyComputer, SortKeyComputer},
    columnar::Column,
    query::{EmptyQuery, Query, QueryParser, QueryParserError},
    schema::Schema,
    DocId, Score, SegmentReader,
};

use super::{places::Places, Fields, SearchError};

/// Longest query text accepted, in bytes. Also bounds every part of the
/// grammar that is not counted by [`MAX_QUERY_DEPTH`] (`+`/`-` prefixes,
/// terms, phrases, sets).
pub const MAX_QUERY_BYTES: usize = 1024;
/// Deepest query accepted: parentheses open at once plus `NOT`s (each is one
/// level of the parser's recursion; a few thousand overflowed a thread's
/// stack).
pub const MAX_QUERY_DEPTH: usize = 16;
/// Prefix of every page token this API gives out (its format's version).
const CURSOR_VERSION: &str = "c1";
/// Length of a page token: the version, then 16 hex digits each for the last
/// hit's timestamp_detected and det_oid.
const CURSOR_LEN: usize = CURSOR_VERSION.len() + 32;

fn invalid(field: &'static str, reason: impl Into<String>) -> SearchError {
    SearchError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Where a page starts: after the hit with this (timestamp_detected,
/// det_oid), in newest-first order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Cursor {
    pub ts: i64,
    pub det_oid: i64,
}

impl Cursor {
    /// The opaque token for the page after this hit.
    pub fn encode(self) -> String {
        format!(
            "{CURSOR_VERSION}{:016x}{:016x}",
            self.ts as u64, self.det_oid as u64
        )
    }

    /// `""`: the first page. Anything but a token [`Self::encode`] made is
    /// refused (offsets of older versions too), naming `page_token`.
    pub fn decode(token: &str) -> Result<Option<Self>, SearchError> {
        if token.is_empty() {
            return Ok(None);
        }
        let refuse = || {
            invalid(
                "page_token",
                format!(
                    "not a page token this API gave out ({} bytes; tokens are the \
                     `next_page_token` of the previous page); start again without one",
                    token.len()
                ),
            )
        };
        let b = token.as_bytes();
        // Checked byte by byte before slicing: a non-ASCII token never
        // reaches a char-boundary panic.
        if b.len() != CURSOR_LEN
            || !token.starts_with(CURSOR_VERSION)
            || !b[CURSOR_VERSION.len()..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        {
            return Err(refuse());
        }
        let hex = |s: &str| u64::from_str_radix(s, 16).map(|v| v as i64);
        let at = CURSOR_VERSION.len();
        match (hex(&token[at..at + 16]), hex(&token[at + 16..])) {
            (Ok(ts), Ok(det_oid)) => Ok(Some(Self { ts, det_oid })),
            _ => Err(refuse()),
        }
    }
}

/// Checks the query text's size and nesting before the parser sees it.
pub(super) fn check_bounds(text: &str) -> Result<(), SearchError> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(invalid(
            "query",
            format!(
                "{} bytes is more than the limit of {MAX_QUERY_BYTES}",
                text.len()
            ),
        ));
    }
    let depth = depth(text);
    if depth > MAX_QUERY_DEPTH {
        return Err(invalid(
            "query",
            format!("nested {depth} deep (parentheses and NOTs); the limit is {MAX_QUERY_DEPTH}"),
        ));
    }
    Ok(())
}

/// Parentheses open at once (outside quoted phrases, not escaped) plus every
/// `NOT`: an upper bound of the parser's recursion.
fn depth(text: &str) -> usize {
    let (mut open, mut deepest, mut nots) = (0usize, 0usize, 0usize);
    let (mut quoted, mut escaped) = (false, false);
    for c in text.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '(' if !quoted => {
                open += 1;
                deepest = deepest.max(open);
            }
            ')' if !quoted => open = open.saturating_sub(1),
            _ => {}
        }
    }
    for word in text.split_whitespace() {
        if word.trim_start_matches('(') == "NOT" {
            nots += 1;
        }
    }
    deepest + nots
}

/// The query for `text` (already bounded), read as a user would mean it:
///
/// 1. A word made of punctuation alone outside quotes (`—`, `-`, `&`, `/`)
///    is dropped: it is a separator in a name, not syntax (`Site 1000 — Gate
///    1` finds that location; alone, `-` would be a syntax error and `—` a
///    term no event holds).
/// 2. The rest is tantivy query syntax.
/// 3. If it is not valid syntax, or names a field that does not exist
///    (`Gate 1: north`), and names none of the index's `fields` (`item:`
///    says the text is meant as syntax), its words (runs of letters and
///    digits) are searched instead, each as a quoted term, all required.
///
/// Other errors (syntax around a field's name, a bad number for a numeric
/// field, only exclusions) are refused, naming `query`. A text of
/// punctuation alone matches nothing.
pub(super) fn parse(
    parser: &QueryParser,
    fields: &Schema,
    places: &Places,
    f: Fields,
    text: &str,
) -> Result<Box<dyn Query>, SearchError> {
    let text = drop_lone_punctuation(text);
    if text.is_empty() {
        return Ok(Box::new(EmptyQuery));
    }
    let refuse = |e: QueryParserError| invalid("query", e.to_string());
    let build = |text: &str| {
        let ast = tantivy::query_grammar::parse_query(text)
            .map_err(|_| QueryParserError::SyntaxError(text.to_string()))?;
        places.build(parser, f, ast)
    };
    match build(&text) {
        Ok(q) => Ok(q),
        Err(e @ (QueryParserError::SyntaxError(_) | QueryParserError::FieldDoesNotExist(_)))
            if names_a_field(fields, &text) =>
        {
            Err(refuse(e))
        }
        Err(QueryParserError::SyntaxError(_) | QueryParserError::FieldDoesNotExist(_)) => {
            let words: Vec<String> = text
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(|w| format!("\"{w}\""))
                .collect();
            if words.is_empty() {
                return Ok(Box::new(EmptyQuery));
            }
            build(&words.join(" ")).map_err(refuse)
        }
        Err(e) => Err(refuse(e)),
    }
}

/// Whether `text` holds `name:` for a field of the index, at the start of
/// a word.
fn names_a_field(schema: &Schema, text: &str) -> bool {
    schema.fields().any(|(_, entry)| {
        let name = format!("{}:", entry.name());
        text.match_indices(&name).any(|(at, _)| {
            text[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
        })
    })
}

/// `text` without its whitespace-separated words (outside quotes) that hold
/// no letter or digit and none of the grouping characters `( ) [ ] { } " *`.
fn drop_lone_punctuation(text: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut escaped) = (false, false);
    let keep = |w: &str| {
        w.chars()
            .any(|c| c.is_alphanumeric() || "()[]{}\"*".contains(c))
    };
    for c in text.chars() {
        if !quoted && !escaped && c.is_whitespace() {
            if keep(&word) {
                words.push(std::mem::take(&mut word));
            }
            word.clear();
            continue;
        }
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            _ => {}
        }
        word.push(c);
    }
    if keep(&word) {
        words.push(word);
    }
    words.join(" ")
}

/// Sorts hits newest detection first, then by det_oid (higher first): a
/// total order, so a cursor names one position. Hits at or after `after`
/// get no key (`None`, below every hit) and are dropped from the page.
pub(super) struct NewestFirst {
    pub after: Option<Cursor>,
}

pub(super) type SortKey = Option<(i64, i64)>;

impl SortKeyComputer for NewestFirst {
    type SortKey = SortKey;
    type Child = SegmentNewestFirst;
    type Comparator = NaturalComparator;

    fn segment_sort_key_computer(&self, segment: &SegmentReader) -> tantivy::Result<Self::Child> {
        let fast = segment.fast_fields();
        Ok(SegmentNewestFirst {
            ts: fast.i64("ts")?,
            det_oid: fast.i64("det_oid")?,
            after: self.after.map(|c| (c.ts, c.det_oid)),
        })
    }
}

pub(super) struct SegmentNewestFirst {
    ts: Column<i64>,
    det_oid: Column<i64>,
    after: Option<(i64, i64)>,
}

impl SegmentSortKeyComputer for SegmentNewestFirst {
    type SortKey = SortKey;
    type SegmentSortKey = SortKey;
    type SegmentComparator = NaturalComparator;

    fn segment_sort_key(&mut self, doc: DocId, _score: Score) -> SortKey {
        let key = (self.ts.first(doc)?, self.det_oid.first(doc)?);
        match self.after {
            Some(after) if key >= after => None,
            _ => Some(key),
        }
    }

    fn convert_segment_sort_key(&self, key: SortKey) -> SortKey {
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_its_token() {
        for c in [
            Cursor { ts: 0, det_oid: 0 },
            Cursor {
                ts: 1_800_000_000_123,
                det_oid: -5,
            },
            Cursor {
                ts: i64::MIN,
                det_oid: i64::MAX,
            },
        ] {
            assert_eq!(Cursor::decode(&c.encode()).unwrap(), Some(c));
        }
        assert_eq!(Cursor::decode("").unwrap(), None);
    }

    #[test]
    fn a_token_the_api_did_not_give_out_is_refused_naming_the_field() {
        let good = Cursor { ts: 1, det_oid: 2 }.encode();
        let mut non_ascii = good.clone();
        non_ascii.replace_range(2..4, "é");
        for bad in [
            "20".to_string(),
            "18446744073709551615".into(),
            good[..good.len() - 1].into(),
            format!("{good}0"),
            good.replace("c1", "c2"),
            good.to_uppercase(),
            non_ascii,
            "é".repeat(17),
            format!("c1{}", "g".repeat(32)),
        ] {
            let e = Cursor::decode(&bad).unwrap_err().to_string();
            assert!(e.starts_with("field `page_token`: "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn depth_counts_open_parentheses_and_nots_outside_phrases() {
        assert_eq!(depth("a (b (c) d) (e)"), 2);
        assert_eq!(depth("\"((((\" a"), 0);
        assert_eq!(depth(r"\( a"), 0);
        assert_eq!(depth("NOT NOT (NOT a)"), 4);
        assert!(check_bounds(&"(".repeat(MAX_QUERY_DEPTH)).is_ok());
        let e = check_bounds(&"(".repeat(MAX_QUERY_DEPTH + 1))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("field `query`: ") && e.contains("16"), "{e}");
        let e = check_bounds(&"a".repeat(MAX_QUERY_BYTES + 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("field `query`: ") && e.contains("1024"),
            "{e}"
        );
    }

    #[test]
    fn lone_punctuation_outside_quotes_is_dropped() {
        assert_eq!(
            drop_lone_punctuation("Site 1000 — Gate 1"),
            "Site 1000 Gate 1"
        );
        assert_eq!(drop_lone_punctuation("a - b & c"), "a b c");
        assert_eq!(
            drop_lone_punctuation("\"Gate — 1\" ( x )"),
            "\"Gate — 1\" ( x )"
        );
        assert_eq!(drop_lone_punctuation("-gate * —"), "-gate *");
    }
}
