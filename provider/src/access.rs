//! Who may read what: the one rule both protocols authorize GET and Observe requests with.
//!
//! A GET names a hash and a [`ChunkRangesSeq`]: ranges of the blob itself (offset 0) and of its
//! *children* (offsets 1…), which iroh-blobs serves by reading the blob as a hash sequence,
//! whatever the blob really is. Authorizing the hash alone would let any readable blob whose
//! bytes happen to be 32-byte hashes (a job result a buyer wrote, a file of a sold dataset)
//! index the whole store. So a request may ask for children only when its hash is a
//! collection root the requester may read; every other request must be for the blob alone.

use std::collections::HashSet;

use bdc_core::Hash;
use iroh_blobs::protocol::{ChunkRangesSeq, GetRequest};

/// Whether `ranges` asks for nothing beyond the first blob (the requested hash itself).
pub fn blob_only(ranges: &ChunkRangesSeq) -> bool {
    ranges.is_empty() || ranges.is_blob()
}

/// A GET is allowed if its hash is readable and, when it asks for children, the hash is a
/// collection root the requester may read (whose children are then readable by construction).
pub fn get_allowed(req: &GetRequest, readable: impl Fn(&Hash) -> bool, collection: impl Fn(&Hash) -> bool) -> bool {
    readable(&req.hash) && (blob_only(&req.ranges) || collection(&req.hash))
}

/// What the free protocol serves to anyone: the blobs of free datasets and of free job results,
/// and which of them are collection roots.
#[derive(Debug, Default)]
pub struct FreeSet {
    hashes: HashSet<Hash>,
    collections: HashSet<Hash>,
}

impl FreeSet {
    /// A raw blob.
    pub fn add_blob(&mut self, hash: Hash) {
        self.hashes.insert(hash);
    }

    /// A collection: its root and every blob of its hash sequence.
    pub fn add_collection(&mut self, root: Hash, hashes: impl IntoIterator<Item = Hash>) {
        self.hashes.insert(root);
        self.hashes.extend(hashes);
        self.collections.insert(root);
    }

    pub fn contains(&self, hash: &Hash) -> bool {
        self.hashes.contains(hash)
    }

    pub fn allows(&self, req: &GetRequest) -> bool {
        get_allowed(req, |h| self.hashes.contains(h), |h| self.collections.contains(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh_blobs::protocol::{ChunkRanges, ChunkRangesExt};

    #[test]
    fn children_only_through_a_collection_root() {
        let (blob, root, child) = (Hash::new(b"a"), Hash::new(b"b"), Hash::new(b"c"));
        let mut free = FreeSet::default();
        free.add_blob(blob);
        free.add_collection(root, [child]);
        // the blob alone, whole or in part: fine
        assert!(free.allows(&GetRequest::blob(blob)));
        assert!(free.allows(&GetRequest::blob_ranges(blob, ChunkRanges::chunks(0..4))));
        // a raw blob read as a hash sequence: refused, whatever children it would name
        assert!(!free.allows(&GetRequest::all(blob)));
        assert!(!free.allows(&GetRequest::builder().child(0, ChunkRanges::all()).build(blob)));
        // a collection root with all its children: fine; a child read as a hash sequence: refused
        assert!(free.allows(&GetRequest::all(root)));
        assert!(free.allows(&GetRequest::blob(child)));
        assert!(!free.allows(&GetRequest::all(child)));
        // unknown hashes: refused in every form
        assert!(!free.allows(&GetRequest::blob(Hash::new(b"d"))));
    }
}
