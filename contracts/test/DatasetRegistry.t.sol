// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Base} from "./Base.sol";
import {DatasetRegistry} from "../src/DatasetRegistry.sol";

contract DatasetRegistryTest is Base {
    bytes32 internal constant R = keccak256("another-dataset");

    function test_register_records_vendor_and_terms() public {
        vm.prank(vendor);
        registry.register(R, 250, keccak256("m"), 7);
        DatasetRegistry.Dataset memory d = registry.get(R);
        require(d.vendor == vendor, "vendor");
        assertEq(d.royaltyBps, 250, "royalty");
        assertEq(d.priceHint, 7, "price hint");
        require(d.manifestHash == keccak256("m"), "manifest");
        (address v, uint16 bps) = registry.royaltyOf(R);
        require(v == vendor && bps == 250, "royaltyOf");
    }

    function test_register_rejects_bad_input() public {
        vm.expectRevert(DatasetRegistry.ZeroRoot.selector);
        registry.register(bytes32(0), 0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(DatasetRegistry.RoyaltyTooHigh.selector, uint16(10_001)));
        registry.register(R, 10_001, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(DatasetRegistry.AlreadyRegistered.selector, ROOT));
        registry.register(ROOT, 0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(DatasetRegistry.NotRegistered.selector, R));
        registry.royaltyOf(R);
    }

    function test_only_vendor_updates() public {
        vm.expectRevert(abi.encodeWithSelector(DatasetRegistry.NotVendor.selector, ROOT, address(this)));
        registry.update(ROOT, 0, 0, 0);
        vm.prank(vendor);
        registry.update(ROOT, 10_000, keccak256("m2"), 9);
        (, uint16 bps) = registry.royaltyOf(ROOT);
        assertEq(bps, 10_000, "updated royalty");
        vm.prank(vendor);
        vm.expectRevert(abi.encodeWithSelector(DatasetRegistry.RoyaltyTooHigh.selector, uint16(10_001)));
        registry.update(ROOT, 10_001, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(DatasetRegistry.NotRegistered.selector, R));
        registry.update(R, 0, 0, 0);
    }

    function test_transfer_vendor() public {
        vm.prank(vendor);
        vm.expectRevert(DatasetRegistry.ZeroAddress.selector);
        registry.transferVendor(ROOT, address(0));
        vm.prank(vendor);
        registry.transferVendor(ROOT, buyer);
        (address v,) = registry.royaltyOf(ROOT);
        require(v == buyer, "new vendor");
        vm.prank(vendor);
        vm.expectRevert(abi.encodeWithSelector(DatasetRegistry.NotVendor.selector, ROOT, vendor));
        registry.update(ROOT, 0, 0, 0);
    }

    function testFuzz_royalty_bound(uint16 bps) public {
        bytes32 r = keccak256(abi.encode(bps));
        if (bps > 10_000) {
            vm.expectRevert(abi.encodeWithSelector(DatasetRegistry.RoyaltyTooHigh.selector, bps));
        }
        registry.register(r, bps, 0, 0);
    }
}
