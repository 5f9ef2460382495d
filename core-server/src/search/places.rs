//! What a query asks of the locations, answered from Dataset B itself.
//!
//! An event's document holds its `location_oid`, not its location's name and
//! columns: those are Dataset B's, the same for every event at a place, and
//! indexing them with each event was most of its words (12 of 16 at a
//! typical row) and a re-index of every event whenever Dataset B was
//! reloaded. Instead a query's parts on `location` and `columns` (named, or
//! through the default fields) are looked up in a small index of Dataset B's
//! rows — one document per location, in memory, with the events' schema and
//! tokenizers, so a term, a phrase, a prefix or a range means exactly what it
//! meant on the events — and become the set of locations they match.
//!
//! How a query is built ([`Places::build`]):
//!
//! 1. The text is parsed into tantivy's syntax tree (boosts dropped: hits
//!    are ordered by time, never by score).
//! 2. Each leaf gets its own query: on `location` or `columns`, the events at
//!    the locations it matches; unfielded, its query on the events' default
//!    fields (`item`, `agent`) or the events at the locations it matches on
//!    `location` and `columns`; on any other field, tantivy's query for it.
//! 3. The tree's shape (`AND`, `OR`, `NOT`, `+`, `-`, the default
//!    conjunction, the refusal of a query of exclusions only) is tantivy's
//!    own: the tree is built by the parser with every leaf replaced by a
//!    numbered placeholder, whose queries are then swapped for the leaves'.
//!    A leaf that holds no term (punctuation alone, even quoted) is left out
//!    of the tree, as tantivy leaves it out.
//! 4. One change to tantivy's reading: a group of exclusions only inside a
//!    query (`car AND NOT location:gate` is `(+car +(-location:gate))`)
//!    means everything but them, not nothing.

use std::sync::Arc;

use tantivy::{
    collector::DocSetCollector,
    query::{
        BooleanQuery, EmptyQuery, Occur as QOccur, Query, QueryParser, QueryParserError, TermQuery,
    },
    query_grammar::{Delimiter, Occur, UserInputAst, UserInputLeaf, UserInputLiteral},
    schema::Schema,
    Index, IndexReader, TantivyDocument, Term,
};

use super::{safe_delete::SafeTermSet, Fields, SearchError};
use crate::enrich::LocationTable;

/// The fields a query's leaves are answered from Dataset B for.
const PLACE_FIELDS: [&str; 2] = ["location", "columns"];

/// tantivy's least writer arena: the index of Dataset B is written once per
/// table, in one segment.
const WRITER_HEAP: usize = 15_000_000;

/// Dataset B's rows as an index, for one table.
pub(super) struct Places {
    pub table: Arc<LocationTable>,
    reader: IndexReader,
    /// Over `location` and `columns` by default.
    parser: QueryParser,
}

impl Places {
    /// Indexes `table`'s rows with the events' `schema`: one document per
    /// location, its name in `location` and each other column as a "name
    /// value" text in `columns`.
    pub fn new(schema: &Schema, f: Fields, table: Arc<LocationTable>) -> Result<Self, SearchError> {
        let index = Index::create_in_ram(schema.clone());
        let mut writer = index.writer_with_num_threads::<TantivyDocument>(1, WRITER_HEAP)?;
        for (oid, l) in &table.rows {
            let mut doc = TantivyDocument::default();
            doc.add_i64(f.location_oid, *oid);
            doc.add_text(f.location, &l.geographical_location);
            let mut cols: Vec<_> = l.extra.iter().collect();
            cols.sort();
            for (k, v) in cols {
                doc.add_text(f.columns, format!("{k} {v}"));
            }
            writer.add_document(doc)?;
        }
        writer.commit()?;
        drop(writer);
        let (reader, parser) = super::reader_and_parser(&index, vec![f.location, f.columns])?;
        Ok(Self {
            table,
            reader,
            parser,
        })
    }

    /// The location oids whose row `leaf` matches (unfielded: on `location`
    /// or `columns`), in order; `None`: the leaf holds no term there
    /// (punctuation alone).
    fn matching(&self, leaf: &UserInputLeaf) -> Result<Option<Vec<i64>>, QueryParserError> {
        let q = self.parser.build_query_from_user_input_ast(single(leaf))?;
        if q.is::<EmptyQuery>() {
            return Ok(None);
        }
        let searcher = self.reader.searcher();
        let docs = searcher
            .search(&q, &DocSetCollector)
            .map_err(|e| QueryParserError::UnsupportedQuery(e.to_string()))?;
        let mut oids = Vec::with_capacity(docs.len());
        for d in docs {
            let column = searcher
                .segment_reader(d.segment_ord)
                .fast_fields()
                .i64("location_oid")
                .map_err(|e| QueryParserError::UnsupportedQuery(e.to_string()))?;
            oids.extend(column.first(d.doc_id));
        }
        oids.sort_unstable();
        Ok(Some(oids))
    }

    /// The query of the parsed `ast` over the events (see the module doc),
    /// with `events`, the parser of the events' index (default fields `item`
    /// and `agent`).
    pub fn build(
        &self,
        events: &QueryParser,
        f: Fields,
        ast: UserInputAst,
    ) -> Result<Box<dyn Query>, QueryParserError> {
        let mut leaves = Vec::new();
        let skeleton = self.placeholders(events, f, ast, &mut leaves, true)?;
        let tree = events.build_query_from_user_input_ast(skeleton)?;
        Ok(swap(tree, f, &mut leaves))
    }

    /// `ast` with each leaf that holds a term replaced by `location_oid:<n>`,
    /// its query put at `leaves[n]`; leaves without one are left out.
    fn placeholders(
        &self,
        events: &QueryParser,
        f: Fields,
        ast: UserInputAst,
        leaves: &mut Vec<Option<Box<dyn Query>>>,
        top: bool,
    ) -> Result<UserInputAst, QueryParserError> {
        Ok(match ast {
            UserInputAst::Clause(clauses) => {
                // `a AND NOT b` is `(+a +(-b))`: a group of exclusions only,
                // which tantivy matches with nothing (so the whole query
                // matched nothing). Inside a query it means everything but
                // them; a query of exclusions only is still refused.
                let negative = !top
                    && !clauses.is_empty()
                    && clauses.iter().all(|(o, _)| *o == Some(Occur::MustNot));
                let mut out = clauses
                    .into_iter()
                    .map(|(occur, sub)| {
                        Ok((occur, self.placeholders(events, f, sub, leaves, false)?))
                    })
                    .collect::<Result<Vec<(Option<Occur>, UserInputAst)>, QueryParserError>>()?;
                if negative {
                    out.push((
                        Some(Occur::Should),
                        self.placeholders(events, f, UserInputLeaf::All.into(), leaves, false)?,
                    ));
                }
                UserInputAst::Clause(out)
            }
            UserInputAst::Boost(sub, _) => self.placeholders(events, f, *sub, leaves, top)?,
            UserInputAst::Leaf(leaf) => {
                let Some(q) = self.leaf(events, f, &leaf)? else {
                    return Ok(UserInputAst::empty_query());
                };
                leaves.push(Some(q));
                UserInputAst::Leaf(Box::new(UserInputLeaf::Literal(UserInputLiteral {
                    field_name: Some("location_oid".into()),
                    phrase: (leaves.len() - 1).to_string(),
                    delimiter: Delimiter::None,
                    slop: 0,
                    prefix: false,
                })))
            }
        })
    }

    /// One leaf's query over the events; `None`: it holds no term.
    fn leaf(
        &self,
        events: &QueryParser,
        f: Fields,
        leaf: &UserInputLeaf,
    ) -> Result<Option<Box<dyn Query>>, QueryParserError> {
        let field = match leaf {
            UserInputLeaf::Literal(l) => l.field_name.as_deref(),
            UserInputLeaf::All => {
                return Ok(Some(events.build_query_from_user_input_ast(single(leaf))?))
            }
            UserInputLeaf::Range { field, .. }
            | UserInputLeaf::Set { field, .. }
            | UserInputLeaf::Regex { field, .. } => field.as_deref(),
            UserInputLeaf::Exists { field } => Some(field.as_str()),
        };
        let at_places = |oids: Vec<i64>| -> Box<dyn Query> {
            Box::new(SafeTermSet::new(
                oids.into_iter()
                    .map(|o| Term::from_field_i64(f.location_oid, o))
                    .collect(),
            ))
        };
        if field.is_some_and(|name| PLACE_FIELDS.contains(&name)) {
            return Ok(self.matching(leaf)?.map(at_places));
        }
        let on_events = events.build_query_from_user_input_ast(single(leaf))?;
        let on_events = (!on_events.is::<EmptyQuery>()).then_some(on_events);
        if field.is_some() {
            return Ok(on_events);
        }
        // Unfielded: the events' default fields or the places it matches.
        Ok(match (on_events, self.matching(leaf)?) {
            // The words tokenize to nothing on every field.
            (None, None) => None,
            (None, Some(oids)) if oids.is_empty() => Some(Box::new(EmptyQuery)),
            (None, Some(oids)) => Some(at_places(oids)),
            (Some(q), None) => Some(q),
            (Some(q), Some(oids)) if oids.is_empty() => Some(q),
            (Some(q), Some(oids)) => Some(Box::new(BooleanQuery::new(vec![
                (QOccur::Should, q),
                (QOccur::Should, at_places(oids)),
            ]))),
        })
    }
}

/// A syntax tree of `leaf` alone.
fn single(leaf: &UserInputLeaf) -> UserInputAst {
    UserInputAst::Leaf(Box::new(leaf.clone()))
}

/// `q` with each placeholder `location_oid:<n>` replaced by `leaves[n]`.
fn swap(q: Box<dyn Query>, f: Fields, leaves: &mut [Option<Box<dyn Query>>]) -> Box<dyn Query> {
    if let Some(b) = q.downcast_ref::<BooleanQuery>() {
        return Box::new(BooleanQuery::new(
            b.clauses()
                .iter()
                .map(|(occur, sub)| (*occur, swap(sub.box_clone(), f, leaves)))
                .collect(),
        ));
    }
    if let Some(t) = q.downcast_ref::<TermQuery>() {
        let term = t.term();
        if term.field() == f.location_oid {
            if let Some(slot) = term
                .value()
                .as_i64()
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| leaves.get_mut(n))
            {
                if let Some(leaf) = slot.take() {
                    return leaf;
                }
            }
        }
    }
    q
}
