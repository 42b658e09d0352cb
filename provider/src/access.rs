//! Who may read what: the one rule both protocols authorize GET and Observe requests with.
//!
//! A GET names a hash and a [`ChunkRangesSeq`]: ranges of the blob itself (offset 0) and of its
//! *children* (offsets 1…), which iroh-blobs serves by reading the blob as a hash sequence,
//! whatever the blob really is. Authorizing the hash alone would let any readable blob whose
//! bytes happen to be 32-byte hashes (a job result a buyer wrote, a file of a sold dataset)
//! index the whole store. So a request may ask for children only when its hash is a
//! collection root the requester may read; every other request must be for the blob alone.
//!
//! Job results are not public: each is readable only by the node that submitted the job (the
//! free protocol learns each connection's EndpointId from its `connected` event).

use std::collections::{HashMap, HashSet};

use bdc_core::Hash;
use iroh::EndpointId;
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

/// What the free protocol serves: to anyone, the blobs of free datasets; to the job's buyer
/// only, the blobs of its job results; and which of them are collection roots.
#[derive(Debug, Default)]
pub struct FreeSet {
    hashes: HashSet<Hash>,
    owned: HashMap<Hash, HashSet<EndpointId>>,
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

    /// A blob only `owner` may read (a job result).
    pub fn add_owned_blob(&mut self, hash: Hash, owner: EndpointId) {
        self.owned.entry(hash).or_default().insert(owner);
    }

    /// A collection only `owner` may read.
    pub fn add_owned_collection(&mut self, root: Hash, hashes: impl IntoIterator<Item = Hash>, owner: EndpointId) {
        for h in std::iter::once(root).chain(hashes) {
            self.add_owned_blob(h, owner);
        }
        self.collections.insert(root);
    }

    /// Whether `peer` (None: unknown) may read `hash`.
    pub fn readable(&self, hash: &Hash, peer: Option<&EndpointId>) -> bool {
        self.hashes.contains(hash) || peer.is_some_and(|p| self.owned.get(hash).is_some_and(|o| o.contains(p)))
    }

    pub fn allows(&self, req: &GetRequest, peer: Option<&EndpointId>) -> bool {
        get_allowed(req, |h| self.readable(h, peer), |h| self.collections.contains(h))
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
        assert!(free.allows(&GetRequest::blob(blob), None));
        assert!(free.allows(&GetRequest::blob_ranges(blob, ChunkRanges::chunks(0..4)), None));
        // a raw blob read as a hash sequence: refused, whatever children it would name
        assert!(!free.allows(&GetRequest::all(blob), None));
        assert!(!free.allows(&GetRequest::builder().child(0, ChunkRanges::all()).build(blob), None));
        // a collection root with all its children: fine; a child read as a hash sequence: refused
        assert!(free.allows(&GetRequest::all(root), None));
        assert!(free.allows(&GetRequest::blob(child), None));
        assert!(!free.allows(&GetRequest::all(child), None));
        // unknown hashes: refused in every form
        assert!(!free.allows(&GetRequest::blob(Hash::new(b"d")), None));
    }

    #[test]
    fn a_job_result_is_readable_by_its_buyer_only() {
        let (buyer, stranger) = (iroh::SecretKey::generate().public(), iroh::SecretKey::generate().public());
        let (root, child) = (Hash::new(b"r"), Hash::new(b"c"));
        let mut free = FreeSet::default();
        free.add_owned_collection(root, [child], buyer);
        assert!(free.allows(&GetRequest::all(root), Some(&buyer)));
        assert!(free.allows(&GetRequest::blob(child), Some(&buyer)));
        for who in [Some(&stranger), None] {
            assert!(!free.allows(&GetRequest::all(root), who));
            assert!(!free.allows(&GetRequest::blob(child), who));
        }
    }
}
