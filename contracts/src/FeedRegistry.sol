// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

/// @title Feed registry
/// @notice A vendor registers a live feed: an append-only log of segments (each an ordinary bdc
/// dataset) whose heads the vendor signs off chain (EIP-712 `FeedHead`, chained by hash, see
/// docs/PROTOCOL.md). The feed's id is `keccak256(abi.encode(vendor, name))`, so a name cannot
/// be squatted under another vendor's id. The vendor stakes BDC on its honesty: anyone who shows
/// two heads of one feed and sequence number, both signed by the vendor, with different contents
/// (an equivocation: two subscribers told two histories) takes half the stake, the other half is
/// burned (so a vendor reporting itself still loses half), and the feed is marked equivocated
/// for good. The vendor may checkpoint a head's hash on chain. Its stake returns only
/// `unstakeDelay` after it closes the feed, so proof of an equivocation has time to arrive.
contract FeedRegistry is EIP712 {
    using SafeERC20 for IERC20;

    struct Feed {
        address vendor;
        uint16 royaltyBps;
        bool equivocated;
        uint64 registeredAt;
        /// @notice When the vendor closed the feed (0: open).
        uint64 closedAt;
        bytes32 manifestHash;
        uint128 stake;
        /// @notice The newest checkpointed head: its sequence number and EIP-712 struct hash.
        uint64 checkpointSeq;
        bytes32 checkpointHead;
    }

    /// @notice A head as the vendor signs it (the Rust side: `bdc_contracts::feed::FeedHead`).
    struct FeedHead {
        bytes32 feedId;
        uint64 seq;
        bytes32 segmentRoot;
        uint64 segmentSize;
        bytes32 prevHead;
        uint64 time;
    }

    bytes32 public constant FEED_HEAD_TYPEHASH = keccak256(
        "FeedHead(bytes32 feedId,uint64 seq,bytes32 segmentRoot,uint64 segmentSize,bytes32 prevHead,uint64 time)"
    );
    uint16 public constant MAX_BPS = 10_000;
    /// @notice The reporter's share of a slashed stake; the rest is burned.
    uint16 public constant REWARD_BPS = 5_000;
    /// @notice Where burned stake goes (the token refuses transfers to address(0)).
    address public constant BURN = 0x000000000000000000000000000000000000dEaD;

    IERC20 public immutable token;
    /// @notice Seconds between closing a feed and taking its stake back.
    uint64 public immutable unstakeDelay;

    mapping(bytes32 id => Feed) private _feeds;

    event FeedRegistered(
        bytes32 indexed id, address indexed vendor, string name, uint16 royaltyBps, bytes32 manifestHash, uint128 stake
    );
    event Checkpointed(bytes32 indexed id, uint64 seq, bytes32 head);
    event FeedClosed(bytes32 indexed id);
    event StakeWithdrawn(bytes32 indexed id, uint128 amount);
    event Equivocated(bytes32 indexed id, uint64 seq, address indexed reporter, uint128 reward, uint128 burned);

    error EmptyName();
    error AlreadyRegistered(bytes32 id);
    error NotRegistered(bytes32 id);
    error NotVendor(bytes32 id, address caller);
    error RoyaltyTooHigh(uint16 royaltyBps);
    error FeedIsClosed(bytes32 id);
    error FeedNotClosed(bytes32 id);
    error StakeLocked(bytes32 id, uint64 until);
    error FeedEquivocated(bytes32 id);
    error CheckpointNotNewer(uint64 have, uint64 got);
    error NotOneSlot();
    error SameHead();
    error NotVendorSignature(address signer);
    error ZeroAddress();
    error ZeroStake();
    error ZeroHead();
    error NothingToWithdraw(bytes32 id);
    error UnstakeDelayOutOfRange(uint64 delay);

    /// @notice Bounds of `unstakeDelay`: long enough for a proof to land, short enough that
    /// `closedAt + unstakeDelay` never overflows.
    uint64 public constant MIN_UNSTAKE_DELAY = 1 days;
    uint64 public constant MAX_UNSTAKE_DELAY = 365 days;

    constructor(IERC20 token_, uint64 unstakeDelay_) EIP712("BDC Feed", "1") {
        if (address(token_) == address(0)) revert ZeroAddress();
        if (unstakeDelay_ < MIN_UNSTAKE_DELAY || unstakeDelay_ > MAX_UNSTAKE_DELAY) {
            revert UnstakeDelayOutOfRange(unstakeDelay_);
        }
        token = token_;
        unstakeDelay = unstakeDelay_;
    }

    modifier onlyVendor(bytes32 id) {
        address vendor = _feeds[id].vendor;
        if (vendor == address(0)) revert NotRegistered(id);
        if (vendor != msg.sender) revert NotVendor(id, msg.sender);
        _;
    }

    /// @notice The id of `vendor`'s feed `name`.
    function feedId(address vendor, string calldata name) public pure returns (bytes32) {
        return keccak256(abi.encode(vendor, name));
    }

    /// @notice Registers the caller's feed `name`, pulling `stake` BDC from it (approve first).
    function register(string calldata name, uint16 royaltyBps, bytes32 manifestHash, uint128 stake)
        external
        returns (bytes32 id)
    {
        if (bytes(name).length == 0) revert EmptyName();
        if (royaltyBps > MAX_BPS) revert RoyaltyTooHigh(royaltyBps);
        // a feed with nothing at stake could equivocate for free
        if (stake == 0) revert ZeroStake();
        id = feedId(msg.sender, name);
        if (_feeds[id].vendor != address(0)) revert AlreadyRegistered(id);
        _feeds[id] = Feed({
            vendor: msg.sender,
            royaltyBps: royaltyBps,
            equivocated: false,
            registeredAt: uint64(block.timestamp),
            closedAt: 0,
            manifestHash: manifestHash,
            stake: stake,
            checkpointSeq: 0,
            checkpointHead: bytes32(0)
        });
        emit FeedRegistered(id, msg.sender, name, royaltyBps, manifestHash, stake);
        token.safeTransferFrom(msg.sender, address(this), stake);
    }

    /// @notice Records head `seq`'s struct hash on chain (a later sequence number than the last).
    function checkpoint(bytes32 id, uint64 seq, bytes32 head) external onlyVendor(id) {
        if (head == bytes32(0)) revert ZeroHead();
        Feed storage f = _feeds[id];
        if (f.closedAt != 0) revert FeedIsClosed(id);
        if (f.checkpointHead != bytes32(0) && seq <= f.checkpointSeq) revert CheckpointNotNewer(f.checkpointSeq, seq);
        f.checkpointSeq = seq;
        f.checkpointHead = head;
        emit Checkpointed(id, seq, head);
    }

    /// @notice Closes the feed: no more checkpoints; the stake can be taken back `unstakeDelay` later.
    function close(bytes32 id) external onlyVendor(id) {
        Feed storage f = _feeds[id];
        if (f.closedAt != 0) revert FeedIsClosed(id);
        f.closedAt = uint64(block.timestamp);
        emit FeedClosed(id);
    }

    /// @notice Returns the stake of a closed, honest feed to its vendor once the delay passed.
    function withdrawStake(bytes32 id) external onlyVendor(id) {
        Feed storage f = _feeds[id];
        if (f.equivocated) revert FeedEquivocated(id);
        if (f.closedAt == 0) revert FeedNotClosed(id);
        uint64 until = f.closedAt + unstakeDelay;
        if (block.timestamp < until) revert StakeLocked(id, until);
        uint128 amount = f.stake;
        if (amount == 0) revert NothingToWithdraw(id);
        f.stake = 0;
        emit StakeWithdrawn(id, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice Two heads of one feed and sequence number, both signed by its vendor, with
    /// different contents: the feed is marked equivocated, the caller takes `REWARD_BPS` of the
    /// stake and the rest is burned.
    function slash(FeedHead calldata a, bytes calldata sigA, FeedHead calldata b, bytes calldata sigB) external {
        if (a.feedId != b.feedId || a.seq != b.seq) revert NotOneSlot();
        bytes32 ha = hashHead(a);
        bytes32 hb = hashHead(b);
        if (ha == hb) revert SameHead();
        bytes32 id = a.feedId;
        Feed storage f = _feeds[id];
        if (f.vendor == address(0)) revert NotRegistered(id);
        if (f.equivocated) revert FeedEquivocated(id);
        _requireVendor(f.vendor, _hashTypedDataV4(ha), sigA);
        _requireVendor(f.vendor, _hashTypedDataV4(hb), sigB);
        f.equivocated = true;
        uint128 stake = f.stake;
        f.stake = 0;
        uint128 reward = uint128(uint256(stake) * REWARD_BPS / MAX_BPS);
        uint128 burned = stake - reward;
        emit Equivocated(id, a.seq, msg.sender, reward, burned);
        if (reward > 0) token.safeTransfer(msg.sender, reward);
        if (burned > 0) token.safeTransfer(BURN, burned);
    }

    /// @notice A head's EIP-712 struct hash (what the next head names as `prevHead`).
    function hashHead(FeedHead calldata h) public pure returns (bytes32) {
        return
            keccak256(abi.encode(FEED_HEAD_TYPEHASH, h.feedId, h.seq, h.segmentRoot, h.segmentSize, h.prevHead, h.time));
    }

    /// @notice The digest a vendor signs for `h`.
    function headDigest(FeedHead calldata h) external view returns (bytes32) {
        return _hashTypedDataV4(hashHead(h));
    }

    function get(bytes32 id) external view returns (Feed memory) {
        return _feeds[id];
    }

    function _requireVendor(address vendor, bytes32 digest, bytes calldata sig) private pure {
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, sig);
        if (err != ECDSA.RecoverError.NoError || signer != vendor) revert NotVendorSignature(signer);
    }
}
