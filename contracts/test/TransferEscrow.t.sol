// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Base} from "./Base.sol";
import {TransferEscrow} from "../src/TransferEscrow.sol";
import {DatasetRegistry} from "../src/DatasetRegistry.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

contract TransferEscrowTest is Base {
    uint64 internal expiry;

    function setUp() public override {
        super.setUp();
        expiry = uint64(block.timestamp + 7 days);
    }

    // ------------------------------------------------------------ open

    function test_open_escrows_max_amount() public {
        uint256 before = token.balanceOf(buyer);
        (bytes32 id,) = open(100 ether, expiry);
        assertEq(token.balanceOf(address(escrow)), 100 ether, "escrow balance");
        assertEq(token.balanceOf(buyer), before - 100 ether, "buyer balance");
        (uint96 redeemed, uint96 paidOut, uint40 releaseAt, uint8 flags) = escrow.deals(id);
        assertEq(redeemed + paidOut + releaseAt, 0, "fresh state");
        assertEq(flags, 1, "open");
        assertEq(escrow.dealCount(), 2, "counter");
    }

    function test_open_rejects_bad_input() public {
        vm.startPrank(buyer);
        vm.expectRevert(TransferEscrow.ZeroAddress.selector);
        escrow.openDeal(address(0), NODE_ID, ROOT, 1, 1 ether, 1, expiry, arbiter);
        vm.expectRevert(TransferEscrow.ZeroAddress.selector);
        escrow.openDeal(provider, NODE_ID, ROOT, 1, 1 ether, 1, expiry, address(0));
        vm.expectRevert(TransferEscrow.ZeroAmount.selector);
        escrow.openDeal(provider, NODE_ID, ROOT, 1, 0, 1, expiry, arbiter);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.AmountTooLarge.selector, uint256(type(uint96).max) + 1));
        escrow.openDeal(provider, NODE_ID, ROOT, 1, uint256(type(uint96).max) + 1, 1, expiry, arbiter);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.ExpiryInPast.selector, uint64(block.timestamp)));
        escrow.openDeal(provider, NODE_ID, ROOT, 1, 1 ether, 1, uint64(block.timestamp), arbiter);
        vm.expectRevert(abi.encodeWithSelector(DatasetRegistry.NotRegistered.selector, bytes32(uint256(1))));
        escrow.openDeal(provider, NODE_ID, bytes32(uint256(1)), 1, 1 ether, 1, expiry, arbiter);
        vm.expectRevert(TransferEscrow.BuyerIsProvider.selector);
        escrow.openDeal(buyer, NODE_ID, ROOT, 1, 1 ether, 1, expiry, arbiter);
        vm.stopPrank();
    }

    function test_open_with_permit() public {
        uint256 pk = 0xFEED;
        address b = vm.addr(pk);
        token.faucet(b, 50 ether);
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                b,
                address(escrow),
                50 ether,
                token.nonces(b),
                deadline
            )
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash));
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, digest);
        vm.prank(b);
        escrow.openDealWithPermit(provider, NODE_ID, ROOT, 1, 50 ether, 1, expiry, arbiter, deadline, v, r, s);
        assertEq(token.balanceOf(address(escrow)), 50 ether, "escrowed via permit");
    }

    // ------------------------------------------------------------ redeem

    function test_redeem_moves_delta_to_pending() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        assertEq(redeemBy(escrow, t, 30 ether, receipt(id, 30 ether)), 30 ether, "first delta");
        assertEq(redeemBy(escrow, t, 45 ether, receipt(id, 45 ether)), 15 ether, "second delta");
        (uint96 redeemed,, uint40 releaseAt,) = escrow.deals(id);
        assertEq(redeemed, 45 ether, "cumulative");
        assertEq(releaseAt, block.timestamp + DISPUTE_WINDOW, "release time");
        assertEq(escrow.owed(t), 100 ether, "still all owed by the escrow");
    }

    function test_stale_receipt_is_a_noop() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        redeemBy(escrow, t, 40 ether, receipt(id, 40 ether));
        assertEq(redeemBy(escrow, t, 20 ether, receipt(id, 20 ether)), 0, "older receipt");
        assertEq(redeemBy(escrow, t, 40 ether, receipt(id, 40 ether)), 0, "replayed receipt");
        (uint96 redeemed,,,) = escrow.deals(id);
        assertEq(redeemed, 40 ether, "unchanged");
    }

    function test_redeem_caps_at_max_amount() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(10 ether, expiry);
        assertEq(redeemBy(escrow, t, 25 ether, receipt(id, 25 ether)), 10 ether, "capped");
        (uint96 redeemed,,,) = escrow.deals(id);
        assertEq(redeemed, 10 ether, "never above max");
    }

    function test_redeem_rejects_wrong_signer() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(10 ether, expiry);
        bytes memory sig = sign(PROVIDER_PK, escrow, id, 5 ether);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.BadSigner.selector, id, provider));
        redeemBy(escrow, t, 5 ether, sig);
    }

    function test_redeem_rejects_malformed_signature() public {
        (, TransferEscrow.Terms memory t) = open(10 ether, expiry);
        vm.expectRevert(abi.encodeWithSelector(ECDSA.ECDSAInvalidSignatureLength.selector, uint256(3)));
        redeemBy(escrow, t, 5 ether, hex"010203");
    }

    function test_receipt_replay_on_another_deal_fails() public {
        (bytes32 idA,) = open(10 ether, expiry);
        (bytes32 idB, TransferEscrow.Terms memory tB) = open(10 ether, expiry);
        bytes memory sigA = receipt(idA, 5 ether);
        address recovered = ECDSA.recover(escrow.receiptDigest(idB, 5 ether), sigA);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.BadSigner.selector, idB, recovered));
        redeemBy(escrow, tB, 5 ether, sigA);
    }

    function test_receipt_replay_on_another_contract_fails() public {
        TransferEscrow other = new TransferEscrow(token, registry, BOND, DISPUTE_WINDOW, ARBITRATION_PERIOD);
        vm.prank(buyer);
        token.approve(address(other), type(uint256).max);
        // same terms (nonce 0 on both), so the same deal id on both contracts
        (bytes32 id, TransferEscrow.Terms memory t) = open(10 ether, expiry);
        (bytes32 id2,) = openOn(other, 10 ether, expiry);
        require(id == id2, "same id");
        bytes memory sig = receipt(id, 5 ether);
        address recovered = ECDSA.recover(other.receiptDigest(id, 5 ether), sig);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.BadSigner.selector, id, recovered));
        redeemBy(other, t, 5 ether, sig);
    }

    function test_receipt_replay_on_another_chain_fails() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(10 ether, expiry);
        bytes memory sig = receipt(id, 5 ether);
        vm.chainId(31338);
        address recovered = ECDSA.recover(escrow.receiptDigest(id, 5 ether), sig);
        require(recovered != buyer, "digest depends on the chain id");
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.BadSigner.selector, id, recovered));
        redeemBy(escrow, t, 5 ether, sig);
    }

    function test_redeem_rejects_tampered_terms() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(10 ether, expiry);
        t.maxAmount = 1_000 ether;
        bytes32 forged = keccak256(abi.encode(t));
        bytes memory sig = receipt(id, 5 ether);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.UnknownDeal.selector, forged));
        redeemBy(escrow, t, 5 ether, sig);
    }

    function test_redeem_after_expiry_fails() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(10 ether, expiry);
        bytes memory sig = receipt(id, 5 ether);
        vm.warp(expiry);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.DealExpired.selector, id));
        redeemBy(escrow, t, 5 ether, sig);
    }

    // ------------------------------------------------------------ withdraw

    function test_withdraw_after_window_splits_royalty() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        redeemBy(escrow, t, 50 ether, receipt(id, 50 ether));
        vm.expectRevert(
            abi.encodeWithSelector(TransferEscrow.NotReleasable.selector, id, uint40(block.timestamp + DISPUTE_WINDOW))
        );
        escrow.withdraw(t);
        vm.warp(block.timestamp + DISPUTE_WINDOW);
        (uint256 toProvider, uint256 toVendor) = escrow.withdraw(t);
        assertEq(toVendor, 5 ether, "10% royalty");
        assertEq(toProvider, 45 ether, "provider share");
        assertEq(token.balanceOf(provider), 45 ether, "provider paid");
        assertEq(token.balanceOf(vendor), 5 ether, "vendor paid");
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.NothingPending.selector, id));
        escrow.withdraw(t);
    }

    // ------------------------------------------------------------ refund

    function test_refund_after_expiry_returns_unredeemed() public {
        uint256 start = token.balanceOf(buyer);
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        redeemBy(escrow, t, 30 ether, receipt(id, 30 ether));
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.DealNotExpired.selector, id, expiry));
        escrow.refund(t);
        vm.warp(expiry);
        assertEq(escrow.refund(t), 70 ether, "refund");
        assertEq(token.balanceOf(buyer), start - 30 ether, "buyer paid only what it receipted");
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.AlreadyRefunded.selector, id));
        escrow.refund(t);
        // pending funds are still withdrawable after the refund
        escrow.withdraw(t);
        assertEq(token.balanceOf(address(escrow)), 0, "escrow empty");
    }

    // ------------------------------------------------------------ disputes

    function test_dispute_freezes_and_arbiter_resolves() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        redeemBy(escrow, t, 40 ether, receipt(id, 40 ether));
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.OnlyBuyer.selector, id));
        escrow.dispute(t, EVIDENCE);
        uint256 buyerBefore = token.balanceOf(buyer);
        vm.prank(buyer);
        escrow.dispute(t, EVIDENCE);
        assertEq(token.balanceOf(buyer), buyerBefore - BOND, "bond posted");
        vm.warp(block.timestamp + DISPUTE_WINDOW);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.DealDisputed.selector, id));
        escrow.withdraw(t);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.OnlyArbiter.selector, id));
        escrow.resolve(t, 10 ether, true);
        vm.prank(arbiter);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.SplitTooLarge.selector, 41 ether, 40 ether));
        escrow.resolve(t, 41 ether, true);
        vm.prank(arbiter);
        escrow.resolve(t, 10 ether, true);
        assertEq(token.balanceOf(buyer), buyerBefore + 10 ether, "buyer gets its share and its bond back");
        assertEq(token.balanceOf(vendor), 3 ether, "royalty on the 30 kept");
        assertEq(token.balanceOf(provider), 27 ether, "provider keeps the rest");
        assertEq(escrow.owed(t), 60 ether, "unredeemed escrow remains");
    }

    function test_bond_goes_to_provider_when_buyer_loses() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        redeemBy(escrow, t, 40 ether, receipt(id, 40 ether));
        vm.prank(buyer);
        escrow.dispute(t, EVIDENCE);
        vm.prank(arbiter);
        escrow.resolve(t, 0, false);
        assertEq(token.balanceOf(provider), 36 ether + BOND, "provider share + bond");
    }

    function test_dispute_outside_window_fails() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        vm.prank(buyer);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.NothingPending.selector, id));
        escrow.dispute(t, EVIDENCE);
        redeemBy(escrow, t, 40 ether, receipt(id, 40 ether));
        vm.warp(block.timestamp + DISPUTE_WINDOW);
        vm.prank(buyer);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.DisputeWindowOver.selector, id, uint40(block.timestamp)));
        escrow.dispute(t, EVIDENCE);
    }

    function test_unruled_dispute_settles_by_default_after_the_deadline() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        redeemBy(escrow, t, 40 ether, receipt(id, 40 ether));
        vm.prank(buyer);
        escrow.dispute(t, EVIDENCE);
        uint40 ruleBy = uint40(block.timestamp + ARBITRATION_PERIOD);
        (,, uint40 deadline, uint8 flags) = escrow.deals(id);
        assertEq(deadline, ruleBy, "the arbiter's deadline is recorded");
        assertEq(flags, 3, "open and disputed");
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.RulingPeriodNotOver.selector, id, ruleBy));
        escrow.settleDispute(t);
        vm.warp(ruleBy);
        // the arbiter is too late, and the pot is not frozen for ever: anyone applies the default
        vm.prank(arbiter);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.RulingPeriodOver.selector, id, ruleBy));
        escrow.resolve(t, 40 ether, true);
        vm.prank(address(0xBEEF));
        escrow.settleDispute(t);
        assertEq(token.balanceOf(provider), 36 ether + BOND, "receipts stand; bond to the provider");
        assertEq(token.balanceOf(vendor), 4 ether, "royalty");
        assertEq(escrow.owed(t), 60 ether, "only the unredeemed escrow remains");
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.NotDisputed.selector, id));
        escrow.settleDispute(t);
    }

    /// A buyer disputing right after the first redeem must not strand the later receipts: they
    /// still redeem, into the frozen pot, and the deadline does not move.
    function test_redeems_during_a_dispute_join_the_frozen_pot() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        redeemBy(escrow, t, 10 ether, receipt(id, 10 ether));
        vm.prank(buyer);
        escrow.dispute(t, EVIDENCE);
        (,, uint40 ruleBy,) = escrow.deals(id);
        vm.warp(block.timestamp + 1 hours);
        assertEq(redeemBy(escrow, t, 60 ether, receipt(id, 60 ether)), 50 ether, "redeemed while disputed");
        (uint96 redeemed,, uint40 after_,) = escrow.deals(id);
        assertEq(redeemed, 60 ether, "in the pot");
        assertEq(after_, ruleBy, "the arbiter's deadline is unchanged");
        vm.prank(arbiter);
        escrow.resolve(t, 0, false);
        assertEq(token.balanceOf(provider), 54 ether + BOND, "the whole pot, less royalty, and the bond");
        vm.warp(expiry);
        assertEq(escrow.refund(t), 40 ether, "the buyer gets back only what it did not receipt");
    }

    /// A ruling for the buyer sent with the pot's size read before a late redeem would leave
    /// that redeem to the provider; `WHOLE_POT` returns whatever the pot holds when it lands.
    function test_a_ruling_for_the_whole_pot_includes_redeems_that_landed_before_it() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        redeemBy(escrow, t, 10 ether, receipt(id, 10 ether));
        vm.prank(buyer);
        escrow.dispute(t, EVIDENCE);
        (uint256 before, uint256 providerBefore) = (token.balanceOf(buyer), token.balanceOf(provider));
        redeemBy(escrow, t, 30 ether, receipt(id, 30 ether));
        uint256 wholePot = escrow.WHOLE_POT();
        vm.prank(arbiter);
        escrow.resolve(t, wholePot, true);
        assertEq(token.balanceOf(buyer), before + 30 ether + BOND, "the late redeem and the bond too");
        assertEq(token.balanceOf(provider), providerBefore, "nothing to the provider");
        // an explicit amount is still bounded by the pot
        (bytes32 id2, TransferEscrow.Terms memory t2) = open(100 ether, expiry);
        redeemBy(escrow, t2, 10 ether, receipt(id2, 10 ether));
        vm.prank(buyer);
        escrow.dispute(t2, EVIDENCE);
        vm.prank(arbiter);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.SplitTooLarge.selector, 11 ether, 10 ether));
        escrow.resolve(t2, 11 ether, true);
    }

    function test_arbitration_period_is_bounded() public {
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.BadArbitrationPeriod.selector, uint64(0)));
        new TransferEscrow(token, registry, BOND, DISPUTE_WINDOW, 0);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.BadArbitrationPeriod.selector, uint64(366 days)));
        new TransferEscrow(token, registry, BOND, DISPUTE_WINDOW, 366 days);
    }

    // ------------------------------------------------------------ who may redeem

    /// A buyer redeeming 1 wei of its own would restart the dispute window at will.
    function test_only_the_provider_redeems() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        redeemBy(escrow, t, 40 ether, receipt(id, 40 ether));
        (,, uint40 releaseAt,) = escrow.deals(id);
        vm.warp(block.timestamp + DISPUTE_WINDOW - 1);
        bytes memory sig = receipt(id, 40 ether + 1);
        vm.prank(buyer);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.OnlyProvider.selector, id));
        escrow.redeem(t, 40 ether + 1, sig);
        vm.prank(address(0xBEEF));
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.OnlyProvider.selector, id));
        escrow.redeem(t, 40 ether + 1, sig);
        (,, uint40 after_,) = escrow.deals(id);
        assertEq(after_, releaseAt, "release time unchanged");
        vm.warp(releaseAt);
        (uint256 toProvider,) = escrow.withdraw(t);
        assertEq(toProvider, 36 ether, "the provider withdraws on time");
    }

    /// OpenZeppelin's ECDSA refuses the malleable forms alloy accepts: v in {0, 1}, high s.
    function test_malleated_signatures_are_refused() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(BUYER_PK, escrow.receiptDigest(id, 5 ether));
        uint256 n = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141;
        bytes32 highS = bytes32(n - uint256(s));
        uint8 flipped = v == 27 ? 28 : 27;
        vm.expectRevert(abi.encodeWithSelector(ECDSA.ECDSAInvalidSignatureS.selector, highS));
        redeemBy(escrow, t, 5 ether, abi.encodePacked(r, highS, flipped));
        vm.expectRevert(ECDSA.ECDSAInvalidSignature.selector);
        redeemBy(escrow, t, 5 ether, abi.encodePacked(r, s, v - 27));
        assertEq(redeemBy(escrow, t, 5 ether, abi.encodePacked(r, s, v)), 5 ether, "the canonical form redeems");
    }

    /// One bad deal does not revert the others: it is reported and skipped.
    function test_redeem_batch_skips_what_cannot_be_redeemed() public {
        (bytes32 a, TransferEscrow.Terms memory ta) = open(100 ether, expiry);
        (bytes32 b, TransferEscrow.Terms memory tb) = open(100 ether, uint64(block.timestamp + 1 hours));
        (bytes32 c, TransferEscrow.Terms memory tc) = open(100 ether, expiry);
        TransferEscrow.Terms[] memory ts = new TransferEscrow.Terms[](3);
        (ts[0], ts[1], ts[2]) = (ta, tb, tc);
        uint256[] memory amounts = new uint256[](3);
        (amounts[0], amounts[1], amounts[2]) = (10 ether, 20 ether, 30 ether);
        bytes[] memory sigs = new bytes[](3);
        sigs[0] = receipt(a, 10 ether);
        sigs[1] = receipt(b, 20 ether);
        sigs[2] = sign(PROVIDER_PK, escrow, c, 30 ether); // forged
        vm.warp(block.timestamp + 1 hours); // b expired
        vm.prank(provider);
        (uint256 total, bytes4[] memory reasons) = escrow.redeemBatch(ts, amounts, sigs);
        assertEq(total, 10 ether, "only a redeemed");
        require(reasons[0] == bytes4(0), "a redeemed");
        require(reasons[1] == TransferEscrow.DealExpired.selector, "b: expired");
        require(reasons[2] == TransferEscrow.BadSigner.selector, "c: forged");
        (uint96 ra,,,) = escrow.deals(a);
        (uint96 rb,,,) = escrow.deals(b);
        (uint96 rc,,,) = escrow.deals(c);
        assertEq(ra + rb + rc, 10 ether, "b and c untouched");
        uint256[] memory two = new uint256[](2);
        vm.expectRevert(TransferEscrow.LengthMismatch.selector);
        escrow.redeemBatch(ts, two, sigs);
    }

    function test_resolve_without_dispute_fails() public {
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        vm.prank(arbiter);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.NotDisputed.selector, id));
        escrow.resolve(t, 0, true);
    }

    // ------------------------------------------------------------ fuzz

    /// Any sequence of two receipts leaves redeemed == min(max(a, b), maxAmount).
    function testFuzz_redeem_amounts(uint96 maxAmount, uint256 a, uint256 b) public {
        vm.assume(maxAmount > 0 && maxAmount <= 1_000_000 ether);
        (bytes32 id, TransferEscrow.Terms memory t) = open(maxAmount, expiry);
        uint256 got = redeemBy(escrow, t, a, receipt(id, a)) + redeemBy(escrow, t, b, receipt(id, b));
        uint256 hi = a > b ? a : b;
        uint256 want = hi < maxAmount ? hi : maxAmount;
        (uint96 redeemed,,,) = escrow.deals(id);
        assertEq(redeemed, want, "redeemed");
        assertEq(got, want, "sum of deltas");
    }

    /// No key but the buyer's produces a receipt the escrow accepts.
    function testFuzz_only_buyer_signature_accepted(uint256 pk, uint256 amount) public {
        pk = pk % 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364140 + 1;
        vm.assume(pk != BUYER_PK);
        amount = amount % 100 ether + 1;
        (bytes32 id, TransferEscrow.Terms memory t) = open(100 ether, expiry);
        bytes memory sig = sign(pk, escrow, id, amount);
        vm.expectRevert(abi.encodeWithSelector(TransferEscrow.BadSigner.selector, id, vm.addr(pk)));
        redeemBy(escrow, t, amount, sig);
    }

    /// Royalty split never loses or creates a token.
    function testFuzz_split_conserves(uint16 bps, uint96 amount) public {
        bps = uint16(bound(bps, 0, 10_000));
        vm.assume(amount > 0);
        bytes32 root = keccak256(abi.encode(bps, amount));
        vm.prank(vendor);
        registry.register(root, bps, bytes32(0), 0);
        vm.assume(amount <= token.balanceOf(buyer));
        vm.prank(buyer);
        bytes32 id = escrow.openDeal(provider, NODE_ID, root, 1, amount, 1, expiry, arbiter);
        TransferEscrow.Terms memory t = TransferEscrow.Terms(
            buyer, provider, arbiter, vendor, bps, NODE_ID, root, 1, amount, 1, expiry, DISPUTE_WINDOW, 1
        );
        require(keccak256(abi.encode(t)) == id, "terms");
        redeemBy(escrow, t, amount, receipt(id, amount));
        vm.warp(block.timestamp + DISPUTE_WINDOW);
        (uint256 p, uint256 v) = escrow.withdraw(t);
        assertEq(p + v, amount, "conserved");
        assertEq(v, uint256(amount) * bps / 10_000, "royalty");
    }

    /// Redeems as the deal's provider (the only one who may).
    function redeemBy(TransferEscrow e, TransferEscrow.Terms memory t, uint256 amount, bytes memory sig)
        internal
        returns (uint256)
    {
        vm.prank(t.provider);
        return e.redeem(t, amount, sig);
    }

    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        return lo + x % (hi - lo + 1);
    }
}
