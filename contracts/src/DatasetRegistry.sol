// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

/// @title Dataset registry
/// @notice Maps a dataset root (the BLAKE3 root of its iroh-blobs collection) to its vendor, the
/// royalty the vendor takes on every redeemed byte (also when a mirror serves it), the hash of
/// its manifest, and a price hint. Only the vendor changes an entry.
contract DatasetRegistry {
    struct Dataset {
        address vendor;
        uint16 royaltyBps;
        uint64 registeredAt;
        bytes32 manifestHash;
        /// @notice Suggested price, token base units per GiB (informational).
        uint128 priceHint;
    }

    uint16 public constant MAX_BPS = 10_000;

    mapping(bytes32 root => Dataset) private _datasets;

    event DatasetRegistered(
        bytes32 indexed root, address indexed vendor, uint16 royaltyBps, bytes32 manifestHash, uint128 priceHint
    );
    event DatasetUpdated(bytes32 indexed root, uint16 royaltyBps, bytes32 manifestHash, uint128 priceHint);
    event VendorTransferred(bytes32 indexed root, address indexed from, address indexed to);

    error ZeroRoot();
    error ZeroAddress();
    error AlreadyRegistered(bytes32 root);
    error NotRegistered(bytes32 root);
    error NotVendor(bytes32 root, address caller);
    error RoyaltyTooHigh(uint16 royaltyBps);

    modifier onlyVendor(bytes32 root) {
        address vendor = _datasets[root].vendor;
        if (vendor == address(0)) revert NotRegistered(root);
        if (vendor != msg.sender) revert NotVendor(root, msg.sender);
        _;
    }

    /// @notice Registers `root` with the caller as its vendor.
    function register(bytes32 root, uint16 royaltyBps, bytes32 manifestHash, uint128 priceHint) external {
        if (root == bytes32(0)) revert ZeroRoot();
        if (royaltyBps > MAX_BPS) revert RoyaltyTooHigh(royaltyBps);
        if (_datasets[root].vendor != address(0)) revert AlreadyRegistered(root);
        _datasets[root] = Dataset(msg.sender, royaltyBps, uint64(block.timestamp), manifestHash, priceHint);
        emit DatasetRegistered(root, msg.sender, royaltyBps, manifestHash, priceHint);
    }

    /// @notice Changes royalty, manifest hash and price hint. Deals already open keep the royalty
    /// they were opened with.
    function update(bytes32 root, uint16 royaltyBps, bytes32 manifestHash, uint128 priceHint)
        external
        onlyVendor(root)
    {
        if (royaltyBps > MAX_BPS) revert RoyaltyTooHigh(royaltyBps);
        Dataset storage d = _datasets[root];
        d.royaltyBps = royaltyBps;
        d.manifestHash = manifestHash;
        d.priceHint = priceHint;
        emit DatasetUpdated(root, royaltyBps, manifestHash, priceHint);
    }

    /// @notice Hands the dataset (and its future royalties) to another vendor address.
    function transferVendor(bytes32 root, address to) external onlyVendor(root) {
        if (to == address(0)) revert ZeroAddress();
        _datasets[root].vendor = to;
        emit VendorTransferred(root, msg.sender, to);
    }

    function get(bytes32 root) external view returns (Dataset memory) {
        return _datasets[root];
    }

    /// @notice Vendor and royalty of a registered root; reverts if unregistered.
    function royaltyOf(bytes32 root) external view returns (address vendor, uint16 royaltyBps) {
        Dataset storage d = _datasets[root];
        if (d.vendor == address(0)) revert NotRegistered(root);
        return (d.vendor, d.royaltyBps);
    }
}
