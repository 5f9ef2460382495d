//! A [`TermSetQuery`] that leaves empty segments alone.
//!
//! tantivy 0.27 panics on a segment with no documents when a term-set
//! (automaton) query builds its scorer there: `BitSetDocSet::from` on a
//! zero-doc bitset slices past its end (the same bug as
//! paradedb/paradedb#6206). Our deletes by det_oid are term sets, and a
//! merge whose documents were all replaced leaves such a segment; the
//! delete is applied to it on tantivy's merge thread, where the panic
//! aborts the process (rayon). 0.27.0 is the newest release, so the query
//! is wrapped: on a segment with no documents it matches nothing (there is
//! nothing to delete), elsewhere it is the term set unchanged.

use tantivy::{
    query::{EmptyScorer, EnableScoring, Explanation, Query, Scorer, TermSetQuery, Weight},
    DocId, Score, SegmentReader, Term,
};

/// Matches the documents holding any of its terms (see the module doc).
#[derive(Debug, Clone)]
pub struct SafeTermSet(TermSetQuery);

impl SafeTermSet {
    pub fn new(terms: Vec<Term>) -> Self {
        Self(TermSetQuery::new(terms))
    }
}

impl Query for SafeTermSet {
    fn weight(&self, enable_scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(SafeWeight(self.0.weight(enable_scoring)?)))
    }
}

struct SafeWeight(Box<dyn Weight>);

impl Weight for SafeWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        if reader.max_doc() == 0 {
            return Ok(Box::new(EmptyScorer));
        }
        self.0.scorer(reader, boost)
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.0.explain(reader, doc)
    }

    fn for_each_no_score(
        &self,
        reader: &SegmentReader,
        callback: &mut dyn FnMut(&[DocId]),
    ) -> tantivy::Result<()> {
        if reader.max_doc() == 0 {
            return Ok(());
        }
        self.0.for_each_no_score(reader, callback)
    }
}

#[cfg(test)]
mod tests {
    use tantivy::{
        schema::{Schema, INDEXED},
        Index, IndexWriter, TantivyDocument,
    };

    use super::*;

    /// The wrapper matches what tantivy's term set matches.
    #[test]
    fn the_safe_term_set_matches_and_deletes_what_tantivys_term_set_does() {
        let mut schema = Schema::builder();
        let oid = schema.add_i64_field("det_oid", INDEXED);
        let index = Index::create_in_ram(schema.build());
        let mut writer: IndexWriter = index.writer(15_000_000).unwrap();
        let terms = || {
            (0..10)
                .map(|i| Term::from_field_i64(oid, i))
                .collect::<Vec<_>>()
        };
        for i in 0..10 {
            let mut doc = TantivyDocument::default();
            doc.add_i64(oid, i);
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
        let schema = index.schema();
        let scoring = EnableScoring::disabled_from_schema(&schema);
        let count = |q: &dyn Query, seg: &SegmentReader| {
            let mut n = 0;
            q.weight(scoring)
                .unwrap()
                .for_each_no_score(seg, &mut |d| n += d.len())
                .unwrap();
            n
        };
        let reader = index.reader().unwrap();
        let full = reader.searcher().segment_readers()[0].clone();
        assert_eq!(count(&SafeTermSet::new(terms()), &full), 10);
        assert_eq!(count(&TermSetQuery::new(terms()), &full), 10);
        // And as a delete: every document it names goes. (A segment with
        // no documents — the case the wrapper is for — cannot be made
        // through tantivy's public API: a commit drops a segment whose
        // documents are all deleted; a merge racing the deletes leaves one,
        // which is how the crash was seen, in a cluster e2e run.)
        writer
            .delete_query(Box::new(SafeTermSet::new(terms())))
            .unwrap();
        writer.commit().unwrap();
        reader.reload().unwrap();
        assert_eq!(reader.searcher().num_docs(), 0);
    }
}
