//! Partial purchase: the files of a collection whose names match `--include` patterns, or a byte
//! range of a raw blob. Only their chunk ranges are requested — so only they are sent, gated by
//! a paid provider's window, receipted and paid for — verified against the root like any other
//! bytes, and exported. A collection's hash sequence and names blob are always fetched (the
//! names are what the patterns match).

use std::ops::Range;

use bdc_core::{BlobFormat, Hash};
use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt, GetRequest};

use super::BadRequest;

/// How names match: as a shell does, `*` and `?` stop at `/` (`**/` crosses folders), case counts.
const MATCH: glob::MatchOptions =
    glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: false };

/// What a fetch asks for.
#[derive(Debug, Clone, Default)]
pub enum Select {
    /// The whole dataset.
    #[default]
    All,
    /// The files of a collection whose names match one of these patterns (`*.csv`, `2026-*/**`).
    Files(Vec<glob::Pattern>),
    /// Bytes `start..end` of a raw blob (the 16 KiB chunk groups covering them are fetched and
    /// verified; exactly those bytes are exported).
    Range(Range<u64>),
}

impl Select {
    /// Patterns as given on a command line; a malformed one is an error naming it.
    pub fn files<S: AsRef<str>>(patterns: &[S]) -> Result<Self, BadRequest> {
        let compiled = patterns
            .iter()
            .map(|p| {
                glob::Pattern::new(p.as_ref())
                    .map_err(|e| BadRequest::BadPattern { pattern: p.as_ref().to_string(), reason: e.msg })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(if compiled.is_empty() { Self::All } else { Self::Files(compiled) })
    }

    /// `START..END` in bytes (END exclusive).
    pub fn range(r: Range<u64>) -> Result<Self, BadRequest> {
        if r.start >= r.end {
            return Err(BadRequest::EmptyRange { start: r.start, end: r.end });
        }
        Ok(Self::Range(r))
    }

    /// Refuses a selection that does not fit the dataset's format, before anything is asked.
    pub fn check_format(&self, format: BlobFormat) -> Result<(), BadRequest> {
        match (self, format) {
            (Self::Files(_), BlobFormat::Raw) => Err(BadRequest::IncludeNeedsCollection),
            (Self::Range(_), BlobFormat::HashSeq) => Err(BadRequest::RangeNeedsBlob),
            _ => Ok(()),
        }
    }
}

/// The parts of a dataset a partial fetch wants.
#[derive(Debug, Clone)]
pub(super) struct Selection {
    /// The request for them (for a collection: its hash sequence, names and the chosen files).
    pub request: GetRequest,
    /// The chosen files, with their hashes (a raw blob: the one blob).
    pub files: Vec<(String, Hash)>,
    /// For a raw blob: the byte range, clipped to nothing (checked against the verified size).
    pub range: Option<Range<u64>>,
}

/// The selection over `files` (the collection's files in order, or the one raw blob), or None
/// for the whole dataset. `size` is the raw blob's verified size, when known.
pub(super) fn selection(
    select: &Select,
    root: Hash,
    files: &[(String, Hash)],
    size: Option<u64>,
) -> Result<Option<Selection>, BadRequest> {
    match select {
        Select::All => Ok(None),
        Select::Files(patterns) => {
            // child 0 of a collection's hash sequence is its names blob; file k is child k + 1
            let mut b = GetRequest::builder().root(ChunkRanges::all()).child(0, ChunkRanges::all());
            let mut chosen = Vec::new();
            for (k, (name, hash)) in files.iter().enumerate() {
                if patterns.iter().any(|p| p.matches_with(name, MATCH)) {
                    b = b.child(k as u64 + 1, ChunkRanges::all());
                    chosen.push((name.clone(), *hash));
                }
            }
            if chosen.is_empty() {
                let patterns = patterns.iter().map(|p| p.as_str().to_string()).collect::<Vec<_>>().join(", ");
                return Err(BadRequest::NothingMatches { patterns, files: files.len() });
            }
            Ok(Some(Selection { request: b.build(root), files: chosen, range: None }))
        }
        Select::Range(r) => {
            if let Some(size) = size
                && r.end > size
            {
                return Err(BadRequest::RangePastEnd { start: r.start, end: r.end, size });
            }
            Ok(Some(Selection {
                request: GetRequest::blob_ranges(root, ChunkRanges::bytes(r.clone())),
                files: files.to_vec(),
                range: Some(r.clone()),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<(String, Hash)> {
        ["manifest.json", "trades/2026-01.csv", "trades/2026-02.csv", "quotes.parquet"]
            .iter()
            .map(|n| (n.to_string(), Hash::new(n.as_bytes())))
            .collect()
    }

    #[test]
    fn patterns_pick_children_of_the_hash_sequence_by_position() {
        let root = Hash::new(b"root");
        let s = selection(&Select::files(&["trades/*.csv"]).unwrap(), root, &files(), None).unwrap().unwrap();
        assert_eq!(
            s.files.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(),
            ["trades/2026-01.csv", "trades/2026-02.csv"]
        );
        // the hash sequence, its names blob (child 0) and files 1 and 2 (children 2 and 3)
        let asked: Vec<u64> = s.request.ranges.iter_non_empty_infinite().map(|(i, _)| i).collect();
        assert_eq!(asked, [0, 1, 3, 4]);
        let err = selection(&Select::files(&["*.xlsx"]).unwrap(), root, &files(), None).unwrap_err();
        assert!(matches!(err, BadRequest::NothingMatches { files: 4, .. }), "{err}");
        // `*` stops at a folder, as in a shell; `**/` crosses folders
        let top = selection(&Select::files(&["*.csv"]).unwrap(), root, &files(), None);
        assert!(matches!(top, Err(BadRequest::NothingMatches { .. })), "{top:?}");
        let deep = selection(&Select::files(&["**/*.csv"]).unwrap(), root, &files(), None).unwrap().unwrap();
        assert_eq!(deep.files.len(), 2);
        assert!(matches!(Select::files(&["[a-"]), Err(BadRequest::BadPattern { .. })));
        assert!(matches!(Select::files::<&str>(&[]), Ok(Select::All)));
    }

    #[test]
    fn a_range_asks_the_chunk_groups_covering_it_and_stops_at_the_end() {
        let root = Hash::new(b"root");
        let one = vec![("blob".to_string(), root)];
        let s = selection(&Select::range(20_000..40_000).unwrap(), root, &one, Some(1 << 20)).unwrap().unwrap();
        assert_eq!(s.request.ranges.iter_non_empty_infinite().count(), 1);
        assert_eq!(s.range, Some(20_000..40_000));
        let past = selection(&Select::range(0..(1 << 20) + 1).unwrap(), root, &one, Some(1 << 20)).unwrap_err();
        assert!(matches!(past, BadRequest::RangePastEnd { size: 1_048_576, .. }), "{past}");
        assert!(matches!(Select::range(5..5), Err(BadRequest::EmptyRange { .. })));
        assert!(Select::range(0..1).unwrap().check_format(BlobFormat::HashSeq).is_err());
        assert!(Select::files(&["*"]).unwrap().check_format(BlobFormat::Raw).is_err());
    }
}
