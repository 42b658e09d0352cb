// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Base} from "./Base.sol";
import {BDCToken} from "../src/BDCToken.sol";
import {FeedRegistry} from "../src/FeedRegistry.sol";

contract FeedRegistryTest is Base {
    FeedRegistry internal feeds;
    uint128 internal constant STAKE = 1_000 ether;
    uint64 internal constant UNSTAKE_DELAY = 7 days;
    uint256 internal constant REPORTER_PK = 0x4E9;
    address internal reporter;
    bytes32 internal id;

    function setUp() public override {
        super.setUp();
        feeds = new FeedRegistry(token, UNSTAKE_DELAY);
        reporter = vm.addr(REPORTER_PK);
        token.faucet(vendor, 10_000 ether);
        vm.prank(vendor);
        token.approve(address(feeds), type(uint256).max);
        vm.prank(vendor);
        id = feeds.register("kaiko/btc-usd/trades", 1_000, keccak256("feed manifest"), STAKE);
    }

    function head(uint64 seq, bytes32 segmentRoot) internal view returns (FeedRegistry.FeedHead memory) {
        return FeedRegistry.FeedHead({
            feedId: id,
            seq: seq,
            segmentRoot: segmentRoot,
            segmentSize: 1_000_000,
            prevHead: bytes32(uint256(seq)),
            time: 1_764_000_000 + (seq % 1_000_000) * 60
        });
    }

    function signHead(uint256 pk, FeedRegistry.FeedHead memory h) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, feeds.headDigest(h));
        return abi.encodePacked(r, s, v);
    }

    function test_register_pulls_the_stake_under_an_id_only_the_vendor_has() public view {
        FeedRegistry.Feed memory f = feeds.get(id);
        assert(f.vendor == vendor && f.stake == STAKE && f.royaltyBps == 1_000 && !f.equivocated);
        assert(id == keccak256(abi.encode(vendor, "kaiko/btc-usd/trades")));
        assert(token.balanceOf(address(feeds)) == STAKE);
    }

    function test_the_same_name_under_another_vendor_is_another_feed() public {
        token.faucet(provider, STAKE);
        vm.prank(provider);
        token.approve(address(feeds), type(uint256).max);
        vm.prank(provider);
        bytes32 other = feeds.register("kaiko/btc-usd/trades", 0, bytes32(0), STAKE);
        assert(other != id);
        vm.prank(vendor);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.AlreadyRegistered.selector, id));
        feeds.register("kaiko/btc-usd/trades", 0, bytes32(0), 1);
    }

    function test_the_constructor_bounds_the_delay_and_needs_a_token() public {
        vm.expectRevert(FeedRegistry.ZeroAddress.selector);
        new FeedRegistry(BDCToken(address(0)), 7 days);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.UnstakeDelayOutOfRange.selector, uint64(0)));
        new FeedRegistry(token, 0);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.UnstakeDelayOutOfRange.selector, type(uint64).max));
        new FeedRegistry(token, type(uint64).max);
    }

    function test_bad_registrations_are_refused() public {
        vm.prank(vendor);
        vm.expectRevert(FeedRegistry.ZeroStake.selector);
        feeds.register("free to lie", 0, bytes32(0), 0);
        vm.prank(vendor);
        vm.expectRevert(FeedRegistry.EmptyName.selector);
        feeds.register("", 0, bytes32(0), 0);
        vm.prank(vendor);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.RoyaltyTooHigh.selector, uint16(10_001)));
        feeds.register("x", 10_001, bytes32(0), 0);
    }

    function test_checkpoints_only_move_forward_and_only_by_the_vendor() public {
        vm.prank(vendor);
        feeds.checkpoint(id, 5, keccak256("head 5"));
        vm.prank(vendor);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.CheckpointNotNewer.selector, uint64(5), uint64(5)));
        feeds.checkpoint(id, 5, keccak256("another head 5"));
        vm.prank(buyer);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.NotVendor.selector, id, buyer));
        feeds.checkpoint(id, 6, keccak256("head 6"));
        vm.prank(vendor);
        feeds.checkpoint(id, 6, keccak256("head 6"));
        // a zero head would reset the order (the next checkpoint could go back)
        vm.prank(vendor);
        vm.expectRevert(FeedRegistry.ZeroHead.selector);
        feeds.checkpoint(id, 7, bytes32(0));
        FeedRegistry.Feed memory f = feeds.get(id);
        assert(f.checkpointSeq == 6 && f.checkpointHead == keccak256("head 6"));
    }

    function test_an_equivocation_pays_the_reporter_half_and_burns_half() public {
        FeedRegistry.FeedHead memory a = head(7, keccak256("segment 7"));
        FeedRegistry.FeedHead memory b = head(7, keccak256("another segment 7"));
        bytes memory sa = signHead(VENDOR_PK, a);
        bytes memory sb = signHead(VENDOR_PK, b);
        vm.prank(reporter);
        feeds.slash(a, sa, b, sb);
        FeedRegistry.Feed memory f = feeds.get(id);
        assert(f.equivocated && f.stake == 0);
        assert(token.balanceOf(reporter) == STAKE / 2);
        assert(token.balanceOf(feeds.BURN()) == STAKE / 2);
        assert(token.balanceOf(address(feeds)) == 0);
        // once is all
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.FeedEquivocated.selector, id));
        feeds.slash(a, sa, b, sb);
        // and the vendor never takes the stake back
        vm.prank(vendor);
        feeds.close(id);
        vm.warp(block.timestamp + UNSTAKE_DELAY + 1);
        vm.prank(vendor);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.FeedEquivocated.selector, id));
        feeds.withdrawStake(id);
    }

    function test_what_is_not_an_equivocation_is_refused() public {
        FeedRegistry.FeedHead memory a = head(7, keccak256("segment 7"));
        bytes memory sa = signHead(VENDOR_PK, a);
        // the same head twice
        vm.expectRevert(FeedRegistry.SameHead.selector);
        feeds.slash(a, sa, a, sa);
        // two sequence numbers
        FeedRegistry.FeedHead memory c = head(8, keccak256("segment 8"));
        bytes memory sc = signHead(VENDOR_PK, c);
        vm.expectRevert(FeedRegistry.NotOneSlot.selector);
        feeds.slash(a, sa, c, sc);
        // a head the vendor never signed
        FeedRegistry.FeedHead memory forged = head(7, keccak256("forged segment 7"));
        bytes memory sf = signHead(REPORTER_PK, forged);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.NotVendorSignature.selector, reporter));
        feeds.slash(a, sa, forged, sf);
        // a signature the escrow would refuse too (high s)
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(VENDOR_PK, feeds.headDigest(forged));
        uint256 n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
        bytes memory high = abi.encodePacked(r, bytes32(n - uint256(s)), v == 27 ? uint8(28) : uint8(27));
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.NotVendorSignature.selector, address(0)));
        feeds.slash(a, sa, forged, high);
        assert(!feeds.get(id).equivocated && token.balanceOf(address(feeds)) == STAKE);
    }

    function test_an_honest_vendor_takes_its_stake_back_after_the_delay() public {
        vm.prank(vendor);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.FeedNotClosed.selector, id));
        feeds.withdrawStake(id);
        vm.prank(vendor);
        feeds.close(id);
        uint64 until = uint64(block.timestamp) + UNSTAKE_DELAY;
        vm.prank(vendor);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.StakeLocked.selector, id, until));
        feeds.withdrawStake(id);
        vm.prank(vendor);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.FeedIsClosed.selector, id));
        feeds.checkpoint(id, 1, keccak256("late"));
        uint256 before = token.balanceOf(vendor);
        vm.warp(until);
        vm.prank(vendor);
        feeds.withdrawStake(id);
        assert(token.balanceOf(vendor) == before + STAKE && feeds.get(id).stake == 0);
        vm.prank(vendor);
        vm.expectRevert(abi.encodeWithSelector(FeedRegistry.NothingToWithdraw.selector, id));
        feeds.withdrawStake(id);
    }

    function test_a_slash_during_the_unstake_delay_still_lands() public {
        vm.prank(vendor);
        feeds.close(id);
        vm.warp(block.timestamp + UNSTAKE_DELAY - 1);
        FeedRegistry.FeedHead memory a = head(3, keccak256("segment 3"));
        FeedRegistry.FeedHead memory b = head(3, keccak256("other segment 3"));
        feeds.slash(a, signHead(VENDOR_PK, a), b, signHead(VENDOR_PK, b));
        assert(feeds.get(id).equivocated && token.balanceOf(address(this)) == STAKE / 2);
    }

    /// Any two different heads of one slot, both the vendor's, slash; the stake is always split
    /// exactly between the reporter and the burn address.
    function testFuzz_any_two_different_heads_of_one_slot_slash(
        uint64 seq,
        bytes32 x,
        bytes32 y,
        uint64 size,
        bytes32 prev,
        uint64 time
    ) public {
        FeedRegistry.FeedHead memory a = head(seq, x);
        FeedRegistry.FeedHead memory b = head(seq, y);
        b.segmentSize = size;
        b.prevHead = prev;
        b.time = time;
        vm.assume(feeds.hashHead(a) != feeds.hashHead(b));
        // signed first: a prank applies to the next call, which headDigest would take
        bytes memory sa = signHead(VENDOR_PK, a);
        bytes memory sb = signHead(VENDOR_PK, b);
        vm.prank(reporter);
        feeds.slash(a, sa, b, sb);
        assert(token.balanceOf(reporter) + token.balanceOf(feeds.BURN()) == STAKE);
    }
}
