//! Cutting what a download misses into pieces, and asking for what a piece still misses.

use bdc_core::{BlobFormat, Hash};
use iroh_blobs::{
    hashseq::HashSeq,
    protocol::{ChunkRanges, ChunkRangesExt, GetRequest},
};

use super::PIECE_BYTES;
use crate::fetch::{FetchError, Fetcher};

/// The most pieces one download is cut into. A verified size proves only the last chunk, so a
/// dataset can claim an absurd size: past this many pieces they grow instead of multiplying.
const MAX_PIECES: u64 = 1 << 16;

/// The most blobs one piece asks for (a request must stay under iroh-blobs' 1 MiB limit).
const MAX_PARTS: usize = 1024;

/// Chunk ranges of one blob of the request.
#[derive(Debug, Clone)]
pub(super) struct Part {
    /// Its offset in the request: 0 for the root, k + 1 for child k of a hash sequence.
    offset: u64,
    hash: Hash,
    ranges: ChunkRanges,
}

/// One piece of a download.
#[derive(Debug, Clone)]
pub(super) enum Piece {
    /// Ranges of blobs whose hashes are known (one blob's, or several small ones').
    Parts(Vec<Part>),
    /// A request that cannot be cut (a blob whose size is not verified yet).
    Whole(GetRequest),
}

/// The size of a piece when the blobs to fetch claim `claimed` bytes together: [`PIECE_BYTES`],
/// or a multiple of it that keeps them within [`MAX_PIECES`].
fn piece_size(claimed: u128) -> u64 {
    let times = claimed.div_ceil(u128::from(PIECE_BYTES) * u128::from(MAX_PIECES)).max(1);
    u64::try_from(times * u128::from(PIECE_BYTES)).unwrap_or(u64::MAX)
}

impl Fetcher {
    /// `missing` cut into pieces of at most [`PIECE_BYTES`] each (more only when the dataset
    /// claims more than [`MAX_PIECES`] of them): one blob's chunk ranges, or small blobs
    /// together.
    pub(super) async fn pieces(
        &self,
        root: Hash,
        format: BlobFormat,
        missing: GetRequest,
    ) -> Result<Vec<Piece>, FetchError> {
        if missing.ranges.is_infinite() {
            return Ok(vec![Piece::Whole(missing)]);
        }
        let blobs = self.store.blobs();
        let seq = match format {
            BlobFormat::HashSeq => Some(
                HashSeq::try_from(blobs.get_bytes(root).await.map_err(FetchError::store)?)
                    .map_err(|e| FetchError::BadCollection { root, source: Box::new(e) })?,
            ),
            BlobFormat::Raw => None,
        };
        // each blob the request names, with its verified size if known
        let mut wanted = Vec::new();
        for (offset, ranges) in missing.ranges.iter_non_empty_infinite() {
            let hash = match (offset, &seq) {
                (0, _) => Some(root),
                (o, Some(seq)) => seq.get(o as usize - 1),
                (_, None) => None,
            };
            let size = match hash {
                Some(h) => blobs.observe(h).await.map_err(FetchError::store)?.validated_size(),
                None => None,
            };
            wanted.push((offset, hash, size, ranges.clone()));
        }
        let piece = piece_size(wanted.iter().filter_map(|w| w.2).map(u128::from).sum());
        let mut out = Vec::new();
        // small blobs (a collection's many small files) share a piece, up to its size
        let mut group: (Vec<Part>, u64) = (Vec::new(), 0);
        for (offset, hash, size, ranges) in wanted {
            let (Some(hash), Some(size)) = (hash, size) else {
                let b = GetRequest::builder();
                let b = if offset == 0 { b.root(ranges) } else { b.child(offset - 1, ranges) };
                out.push(Piece::Whole(b.build(root)));
                continue;
            };
            // never past the end: a range beyond it is answered with the last chunk group again
            let ranges: ChunkRanges = ranges.intersection(&ChunkRanges::bytes(0..size));
            // grouped by the base piece size whatever the dataset claims, each part counted as at
            // least a chunk group and at most MAX_PARTS of them, so a request stays small
            if offset > 0 && size < PIECE_BYTES {
                group.0.push(Part { offset, hash, ranges });
                group.1 += size.max(16 << 10);
                if group.1 >= PIECE_BYTES || group.0.len() >= MAX_PARTS {
                    out.push(Piece::Parts(std::mem::take(&mut group.0)));
                    group.1 = 0;
                }
                continue;
            }
            let mut start = 0;
            while start < size {
                let end = start.saturating_add(piece);
                let part: ChunkRanges = ranges.intersection(&ChunkRanges::bytes(start..end));
                if !part.is_empty() {
                    out.push(Piece::Parts(vec![Part { offset, hash, ranges: part }]));
                }
                start = end;
            }
        }
        if !group.0.is_empty() {
            out.push(Piece::Parts(group.0));
        }
        Ok(out)
    }

    /// The request for what the store still lacks of `piece` (what another source verified
    /// before it failed or was overtaken is not asked again), or None when it lacks nothing.
    pub(super) async fn piece_request(&self, root: Hash, piece: &Piece) -> Result<Option<GetRequest>, FetchError> {
        let parts = match piece {
            Piece::Whole(req) => {
                let have = self.store.remote().local_for_request(req.clone()).await.map_err(FetchError::store)?;
                return Ok((!have.is_complete()).then(|| have.missing()));
            }
            Piece::Parts(parts) => parts,
        };
        let mut b = GetRequest::builder();
        let mut any = false;
        for p in parts {
            let have = self.store.blobs().observe(p.hash).await.map_err(FetchError::store)?;
            let lacks: ChunkRanges = p.ranges.difference(&have.ranges);
            if lacks.is_empty() {
                continue;
            }
            any = true;
            b = if p.offset == 0 { b.root(lacks) } else { b.child(p.offset - 1, lacks) };
        }
        Ok(any.then(|| b.build(root)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dataset_claiming_an_absurd_size_is_cut_into_a_bounded_number_of_pieces() {
        // up to 256 GiB: 4 MiB pieces
        assert_eq!(piece_size(0), PIECE_BYTES);
        assert_eq!(piece_size(256 << 30), PIECE_BYTES);
        // beyond: bigger pieces, never more than MAX_PIECES, still whole chunk groups
        for claimed in [(256u128 << 30) + 1, 1 << 50, u128::from(u64::MAX) * 1000, u128::MAX] {
            let p = piece_size(claimed);
            assert!(p > PIECE_BYTES && p.is_multiple_of(16 << 10) || p == u64::MAX, "{claimed}: {p}");
            assert!(claimed.div_ceil(u128::from(p)) <= u128::from(MAX_PIECES) || p == u64::MAX, "{claimed}: {p}");
        }
    }

    #[tokio::test]
    async fn pieces_cut_blobs_at_piece_boundaries_and_ask_only_what_is_missing() {
        let tmp = std::env::temp_dir().join(format!("bdc-pieces-{}", rand::random::<u64>()));
        let fetcher = Fetcher::open(crate::fetch::FetcherConfig::test(tmp.clone())).await.unwrap();
        let small = fetcher.store().add_slice(vec![7u8; 3 << 20]).await.unwrap().hash;
        let all = |h: Hash| GetRequest::blob_ranges(h, ChunkRanges::all());
        let pieces = fetcher.pieces(small, BlobFormat::Raw, all(small)).await.unwrap();
        assert_eq!(pieces.len(), 1);
        // a complete blob lacks nothing: no request
        assert!(fetcher.piece_request(small, &pieces[0]).await.unwrap().is_none());
        // 9 MiB: cut at 4 and 8 MiB
        let big = fetcher.store().add_slice(vec![1u8; 9 << 20]).await.unwrap().hash;
        assert_eq!(fetcher.pieces(big, BlobFormat::Raw, all(big)).await.unwrap().len(), 3);
        fetcher.shutdown().await;
        let _ = std::fs::remove_dir_all(tmp);
    }
}
