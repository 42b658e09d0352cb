// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {DatasetRegistry} from "./DatasetRegistry.sol";

/// @title Verifiable-transfer escrow
/// @notice A buyer escrows up to `maxAmount` BDC for a dataset served by a provider. As the buyer
/// verifies data it signs cumulative EIP-712 receipts `Receipt{dealId, cumulativeAmount}`; the
/// provider redeems the newest one, moving `cumulative - redeemed` into the deal's pending pot.
/// After the deal's dispute window the pot is withdrawable: the vendor's royalty to the vendor,
/// the rest to the provider. Inside the window the buyer may dispute (with a bond and a hash of
/// its evidence), which freezes the pot until the deal's arbiter splits it, or, if the arbiter
/// has not ruled within `arbitrationPeriod`, until anyone settles it by the default rule: the
/// receipts the buyer signed stand (the pot goes to provider and vendor) and the bond goes to
/// the provider, as when an arbiter rules for the provider. After expiry the unredeemed escrow
/// returns to the buyer.
/// @dev Gas: a deal's terms are not stored. The deal id is the hash of its terms, every call
/// passes the terms as calldata (they are in the `DealOpened` event), and one storage slot holds
/// the deal's mutable state.
contract TransferEscrow is EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Everything fixed when a deal opens. `dealId == keccak256(abi.encode(terms))`.
    struct Terms {
        address buyer;
        address provider;
        address arbiter;
        /// @dev vendor and royalty are copied from the registry when the deal opens
        address vendor;
        uint16 royaltyBps;
        /// @notice the provider's iroh EndpointId (ed25519 public key)
        bytes32 providerNodeId;
        bytes32 datasetRoot;
        /// @notice token base units per byte, what receipts are computed with
        uint128 pricePerByte;
        uint96 maxAmount;
        /// @notice bytes the provider may send ahead of the newest receipt
        uint64 window;
        uint64 expiry;
        /// @notice seconds redeemed funds wait before they can be withdrawn
        uint64 disputeWindow;
        /// @notice makes every deal id unique (the escrow's deal counter)
        uint64 nonce;
    }

    /// @notice A deal's mutable state: one storage slot.
    struct State {
        uint96 redeemed;
        uint96 paidOut;
        uint40 releaseAt;
        uint8 flags;
    }

    uint8 internal constant OPEN = 1;
    uint8 internal constant DISPUTED = 2;
    uint8 internal constant REFUNDED = 4;
    uint16 internal constant MAX_BPS = 10_000;

    bytes32 public constant RECEIPT_TYPEHASH = keccak256("Receipt(bytes32 dealId,uint256 cumulativeAmount)");

    IERC20 public immutable token;
    DatasetRegistry public immutable registry;
    /// @notice Bond a buyer posts to dispute; returned to the winner.
    uint256 public immutable disputeBond;
    /// @notice Dispute window given to every deal opened here, seconds.
    uint64 public immutable disputeWindow;
    /// @notice How long an arbiter has to rule on a dispute, seconds; then the default applies.
    uint64 public immutable arbitrationPeriod;

    /// @notice The next deal's nonce (deals opened so far + 1).
    uint64 public dealCount;

    mapping(bytes32 dealId => State) public deals;

    event DealOpened(
        bytes32 indexed dealId, address indexed buyer, address indexed provider, bytes32 datasetRoot, Terms terms
    );
    event Redeemed(bytes32 indexed dealId, uint256 amount, uint256 cumulativeAmount, uint40 releaseAt);
    event Withdrawn(bytes32 indexed dealId, uint256 toProvider, uint256 toVendor);
    event Refunded(bytes32 indexed dealId, uint256 amount);
    /// @notice `evidence` is the hash the buyer commits to (the root of a bdc blob holding its
    /// evidence); `ruleBy` is the arbiter's deadline.
    event Disputed(bytes32 indexed dealId, uint256 frozen, uint256 bond, bytes32 evidence, uint40 ruleBy);
    /// @notice `byDefault`: nobody ruled before the deadline and the default rule applied.
    event Resolved(
        bytes32 indexed dealId, uint256 toBuyer, uint256 toProvider, uint256 toVendor, bool buyerWins, bool byDefault
    );
    /// @notice A deal in a `redeemBatch` that could not be redeemed: `reason` is the selector of
    /// the error `redeem` would have reverted with.
    event RedeemFailed(bytes32 indexed dealId, bytes4 reason);

    error ZeroAddress();
    error ZeroAmount();
    error AmountTooLarge(uint256 amount);
    error BuyerIsProvider();
    error ExpiryInPast(uint64 expiry);
    error UnknownDeal(bytes32 dealId);
    error DealExpired(bytes32 dealId);
    error DealNotExpired(bytes32 dealId, uint64 expiry);
    error AlreadyRefunded(bytes32 dealId);
    error BadSigner(bytes32 dealId, address signer);
    error DealDisputed(bytes32 dealId);
    error NotDisputed(bytes32 dealId);
    error NotReleasable(bytes32 dealId, uint40 releaseAt);
    error NothingPending(bytes32 dealId);
    error DisputeWindowOver(bytes32 dealId, uint40 releaseAt);
    error OnlyBuyer(bytes32 dealId);
    error OnlyArbiter(bytes32 dealId);
    error OnlyProvider(bytes32 dealId);
    error SplitTooLarge(uint256 toBuyer, uint256 pending);
    error RulingPeriodOver(bytes32 dealId, uint40 ruleBy);
    error RulingPeriodNotOver(bytes32 dealId, uint40 ruleBy);
    error LengthMismatch();
    error BadArbitrationPeriod(uint64 arbitrationPeriod);

    constructor(
        IERC20 token_,
        DatasetRegistry registry_,
        uint256 disputeBond_,
        uint64 disputeWindow_,
        uint64 arbitrationPeriod_
    ) EIP712("BDC TransferEscrow", "1") {
        if (address(token_) == address(0) || address(registry_) == address(0)) {
            revert ZeroAddress();
        }
        if (arbitrationPeriod_ == 0 || arbitrationPeriod_ > 365 days) revert BadArbitrationPeriod(arbitrationPeriod_);
        token = token_;
        registry = registry_;
        disputeBond = disputeBond_;
        disputeWindow = disputeWindow_;
        arbitrationPeriod = arbitrationPeriod_;
        // nonces start at 1 so the counter's slot is never written from zero (saves 17k gas on
        // the first deal)
        dealCount = 1;
    }

    // ---------------------------------------------------------------- open

    /// @notice Opens a deal: escrows `maxAmount` from the caller (who must have approved it).
    function openDeal(
        address provider,
        bytes32 providerNodeId,
        bytes32 datasetRoot,
        uint128 pricePerByte,
        uint256 maxAmount,
        uint64 window,
        uint64 expiry,
        address arbiter
    ) public returns (bytes32 dealId) {
        if (provider == address(0) || arbiter == address(0)) revert ZeroAddress();
        if (provider == msg.sender) revert BuyerIsProvider();
        if (maxAmount == 0) revert ZeroAmount();
        if (maxAmount > type(uint96).max) revert AmountTooLarge(maxAmount);
        if (expiry <= block.timestamp) revert ExpiryInPast(expiry);
        (address vendor, uint16 royaltyBps) = registry.royaltyOf(datasetRoot);
        uint64 nonce = dealCount;
        dealCount = nonce + 1;
        Terms memory t = Terms({
            buyer: msg.sender,
            provider: provider,
            arbiter: arbiter,
            vendor: vendor,
            royaltyBps: royaltyBps,
            providerNodeId: providerNodeId,
            datasetRoot: datasetRoot,
            pricePerByte: pricePerByte,
            // forge-lint: disable-next-line(unsafe-typecast)
            maxAmount: uint96(maxAmount), // checked above: maxAmount <= type(uint96).max
            window: window,
            expiry: expiry,
            disputeWindow: disputeWindow,
            nonce: nonce
        });
        dealId = keccak256(abi.encode(t));
        deals[dealId] = State(0, 0, 0, OPEN);
        token.safeTransferFrom(msg.sender, address(this), maxAmount);
        emit DealOpened(dealId, msg.sender, provider, datasetRoot, t);
    }

    /// @notice `openDeal` with an EIP-2612 permit instead of a prior approval. A permit that was
    /// already used (e.g. front-run) is ignored when the allowance is there anyway.
    function openDealWithPermit(
        address provider,
        bytes32 providerNodeId,
        bytes32 datasetRoot,
        uint128 pricePerByte,
        uint256 maxAmount,
        uint64 window,
        uint64 expiry,
        address arbiter,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external returns (bytes32) {
        try IERC20Permit(address(token)).permit(msg.sender, address(this), maxAmount, deadline, v, r, s) {} catch {}
        return openDeal(provider, providerNodeId, datasetRoot, pricePerByte, maxAmount, window, expiry, arbiter);
    }

    // ---------------------------------------------------------------- receipts

    /// @notice The provider redeems the buyer's receipt for `cumulativeAmount` (capped at
    /// `maxAmount`): the increase over what was already redeemed becomes pending. A receipt that
    /// is not newer than what was redeemed is a no-op (returns 0). Only the provider may redeem:
    /// each redeem restarts the dispute window, so a buyer redeeming 1 wei of its own would hold
    /// the provider's pot open to disputes for as long as it liked.
    function redeem(Terms calldata t, uint256 cumulativeAmount, bytes calldata buyerSig)
        external
        returns (uint256 amount)
    {
        bytes32 dealId = keccak256(abi.encode(t));
        State memory s = deals[dealId];
        bytes4 err = _unredeemable(t, s);
        if (err != 0) _revertDeal(err, dealId);
        address signer = ECDSA.recover(receiptDigest(dealId, cumulativeAmount), buyerSig);
        if (signer != t.buyer) revert BadSigner(dealId, signer);
        return _credit(t, dealId, s, cumulativeAmount);
    }

    /// @notice Redeems many receipts in one transaction (a provider with many deals expiring
    /// together must not send one transaction per deal). A receipt that cannot be redeemed does
    /// not revert the batch: it emits `RedeemFailed` and its entry of `reasons` holds the selector
    /// of the error `redeem` would revert with (0 for the redeemed ones), so a provider can
    /// simulate the batch with `eth_call` and send only what will redeem. Returns the total added
    /// to the pending pots.
    function redeemBatch(Terms[] calldata ts, uint256[] calldata amounts, bytes[] calldata sigs)
        external
        returns (uint256 total, bytes4[] memory reasons)
    {
        if (ts.length != amounts.length || ts.length != sigs.length) revert LengthMismatch();
        reasons = new bytes4[](ts.length);
        for (uint256 i = 0; i < ts.length; ++i) {
            Terms calldata t = ts[i];
            bytes32 dealId = keccak256(abi.encode(t));
            State memory s = deals[dealId];
            bytes4 err = _unredeemable(t, s);
            if (err == 0) {
                (address signer, ECDSA.RecoverError e,) = ECDSA.tryRecover(receiptDigest(dealId, amounts[i]), sigs[i]);
                if (e != ECDSA.RecoverError.NoError || signer != t.buyer) err = BadSigner.selector;
            }
            if (err != 0) {
                reasons[i] = err;
                emit RedeemFailed(dealId, err);
                continue;
            }
            total += _credit(t, dealId, s, amounts[i]);
        }
    }

    /// @dev The selector of the error a redeem of this deal fails with before its signature is
    /// checked, or 0. A disputed deal still takes redeems (they join the frozen pot, which the
    /// ruling splits): else a buyer could dispute right after the first redeem and strand every
    /// later receipt until the deal expired and it refunded them.
    function _unredeemable(Terms calldata t, State memory s) internal view returns (bytes4) {
        if (s.flags & OPEN == 0) return UnknownDeal.selector;
        if (msg.sender != t.provider) return OnlyProvider.selector;
        if (s.flags & REFUNDED != 0) return AlreadyRefunded.selector;
        if (block.timestamp >= t.expiry) return DealExpired.selector;
        return 0;
    }

    /// @dev Reverts with `err(dealId)`: every error `_unredeemable` returns takes the deal id alone.
    function _revertDeal(bytes4 err, bytes32 dealId) internal pure {
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore(p, err)
            mstore(add(p, 4), dealId)
            revert(p, 36)
        }
    }

    function _credit(Terms calldata t, bytes32 dealId, State memory s, uint256 cumulativeAmount)
        internal
        returns (uint256 amount)
    {
        uint256 capped = cumulativeAmount < t.maxAmount ? cumulativeAmount : t.maxAmount;
        if (capped <= s.redeemed) return 0;
        amount = capped - s.redeemed;
        // capped <= t.maxAmount, a uint96; releaseAt fits uint40 for the next 30,000 years
        // forge-lint: disable-next-line(unsafe-typecast)
        s.redeemed = uint96(capped);
        // while disputed, releaseAt is the arbiter's deadline and stays so
        // forge-lint: disable-next-line(unsafe-typecast)
        if (s.flags & DISPUTED == 0) s.releaseAt = uint40(block.timestamp + t.disputeWindow);
        deals[dealId] = s;
        emit Redeemed(dealId, amount, capped, s.releaseAt);
    }

    /// @notice Pays out the pending pot once the dispute window passed: royalty to the vendor,
    /// the rest to the provider. Anyone may call it.
    function withdraw(Terms calldata t) external nonReentrant returns (uint256 toProvider, uint256 toVendor) {
        bytes32 dealId = keccak256(abi.encode(t));
        State memory s = deals[dealId];
        if (s.flags & OPEN == 0) revert UnknownDeal(dealId);
        if (s.flags & DISPUTED != 0) revert DealDisputed(dealId);
        if (block.timestamp < s.releaseAt) revert NotReleasable(dealId, s.releaseAt);
        uint256 pending = s.redeemed - s.paidOut;
        if (pending == 0) revert NothingPending(dealId);
        s.paidOut = s.redeemed;
        deals[dealId] = s;
        (toProvider, toVendor) = _split(t, pending);
        emit Withdrawn(dealId, toProvider, toVendor);
    }

    /// @notice After expiry, returns the unredeemed escrow to the buyer. Anyone may call it.
    /// Redeemed-but-pending funds stay until withdrawn or resolved.
    /// @dev No reentrancy guard needed: the state is final before the one transfer (CEI).
    function refund(Terms calldata t) external returns (uint256 amount) {
        bytes32 dealId = keccak256(abi.encode(t));
        State memory s = deals[dealId];
        if (s.flags & OPEN == 0) revert UnknownDeal(dealId);
        if (s.flags & REFUNDED != 0) revert AlreadyRefunded(dealId);
        if (block.timestamp < t.expiry) revert DealNotExpired(dealId, t.expiry);
        s.flags |= REFUNDED;
        deals[dealId] = s;
        amount = t.maxAmount - s.redeemed;
        if (amount > 0) token.safeTransfer(t.buyer, amount);
        emit Refunded(dealId, amount);
    }

    // ---------------------------------------------------------------- disputes

    /// @notice The buyer freezes the pending pot inside the dispute window, posting `disputeBond`
    /// and committing to `evidence` (the root of a bdc blob holding it). The arbiter has
    /// `arbitrationPeriod` to rule; after that anyone may `settleDispute`.
    function dispute(Terms calldata t, bytes32 evidence) external {
        bytes32 dealId = keccak256(abi.encode(t));
        State memory s = deals[dealId];
        if (s.flags & OPEN == 0) revert UnknownDeal(dealId);
        if (msg.sender != t.buyer) revert OnlyBuyer(dealId);
        if (s.flags & DISPUTED != 0) revert DealDisputed(dealId);
        uint256 pending = s.redeemed - s.paidOut;
        if (pending == 0) revert NothingPending(dealId);
        if (block.timestamp >= s.releaseAt) revert DisputeWindowOver(dealId, s.releaseAt);
        s.flags |= DISPUTED;
        // while disputed, releaseAt holds the arbiter's deadline
        // forge-lint: disable-next-line(unsafe-typecast)
        s.releaseAt = uint40(block.timestamp + arbitrationPeriod);
        deals[dealId] = s;
        if (disputeBond > 0) token.safeTransferFrom(msg.sender, address(this), disputeBond);
        emit Disputed(dealId, pending, disputeBond, evidence, s.releaseAt);
    }

    /// @notice `toBuyer` in `resolve` meaning the whole frozen pot, whatever it holds when the
    /// ruling lands (redeems during a dispute join the pot, so an amount read earlier may be short).
    uint256 public constant WHOLE_POT = type(uint256).max;

    /// @notice The deal's arbiter splits the frozen pot: `toBuyer` back to the buyer (`WHOLE_POT`:
    /// all of it), the rest to vendor (royalty) and provider; the bond goes to the buyer if
    /// `buyerWins`, else to the provider.
    function resolve(Terms calldata t, uint256 toBuyer, bool buyerWins) external nonReentrant {
        bytes32 dealId = keccak256(abi.encode(t));
        State memory s = deals[dealId];
        if (s.flags & OPEN == 0) revert UnknownDeal(dealId);
        if (msg.sender != t.arbiter) revert OnlyArbiter(dealId);
        if (s.flags & DISPUTED == 0) revert NotDisputed(dealId);
        if (block.timestamp >= s.releaseAt) revert RulingPeriodOver(dealId, s.releaseAt);
        uint256 pending = s.redeemed - s.paidOut;
        if (toBuyer == WHOLE_POT) toBuyer = pending;
        if (toBuyer > pending) revert SplitTooLarge(toBuyer, pending);
        _settle(t, dealId, s, toBuyer, buyerWins, false);
    }

    /// @notice After the arbiter's deadline passed without a ruling, anyone applies the default:
    /// the pot goes to provider and vendor as the buyer's receipts said, the bond to the provider
    /// (the same rule as a ruling for the provider).
    function settleDispute(Terms calldata t) external nonReentrant {
        bytes32 dealId = keccak256(abi.encode(t));
        State memory s = deals[dealId];
        if (s.flags & OPEN == 0) revert UnknownDeal(dealId);
        if (s.flags & DISPUTED == 0) revert NotDisputed(dealId);
        if (block.timestamp < s.releaseAt) revert RulingPeriodNotOver(dealId, s.releaseAt);
        _settle(t, dealId, s, 0, false, true);
    }

    function _settle(Terms calldata t, bytes32 dealId, State memory s, uint256 toBuyer, bool buyerWins, bool byDefault)
        internal
    {
        uint256 pending = s.redeemed - s.paidOut;
        s.paidOut = s.redeemed;
        s.flags &= ~DISPUTED;
        deals[dealId] = s;
        if (toBuyer > 0) token.safeTransfer(t.buyer, toBuyer);
        (uint256 toProvider, uint256 toVendor) = _split(t, pending - toBuyer);
        if (disputeBond > 0) token.safeTransfer(buyerWins ? t.buyer : t.provider, disputeBond);
        emit Resolved(dealId, toBuyer, toProvider, toVendor, buyerWins, byDefault);
    }

    // ---------------------------------------------------------------- views

    /// @notice The EIP-712 digest the buyer signs for a receipt.
    function receiptDigest(bytes32 dealId, uint256 cumulativeAmount) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(RECEIPT_TYPEHASH, dealId, cumulativeAmount)));
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The id of a deal with these terms.
    function idOf(Terms calldata t) external pure returns (bytes32) {
        return keccak256(abi.encode(t));
    }

    /// @notice What the escrow owes for a deal: unredeemed escrow (until refunded), the pending
    /// pot, and a dispute bond while disputed.
    function owed(Terms calldata t) external view returns (uint256) {
        State memory s = deals[keccak256(abi.encode(t))];
        if (s.flags & OPEN == 0) return 0;
        uint256 o = s.redeemed - s.paidOut;
        if (s.flags & REFUNDED == 0) o += t.maxAmount - s.redeemed;
        if (s.flags & DISPUTED != 0) o += disputeBond;
        return o;
    }

    function _split(Terms calldata t, uint256 amount) internal returns (uint256 toProvider, uint256 toVendor) {
        toVendor = amount * t.royaltyBps / MAX_BPS;
        toProvider = amount - toVendor;
        if (toVendor > 0) token.safeTransfer(t.vendor, toVendor);
        if (toProvider > 0) token.safeTransfer(t.provider, toProvider);
    }
}
