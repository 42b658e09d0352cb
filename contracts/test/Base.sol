// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {BDCToken} from "../src/BDCToken.sol";
import {DatasetRegistry} from "../src/DatasetRegistry.sol";
import {TransferEscrow} from "../src/TransferEscrow.sol";

/// @dev The few forge cheatcodes these tests use (forge-std is not installable offline).
interface Vm {
    function warp(uint256) external;
    function prank(address) external;
    function startPrank(address) external;
    function stopPrank() external;
    function expectRevert(bytes calldata) external;
    function expectRevert(bytes4) external;
    function expectRevert() external;
    function sign(uint256 privateKey, bytes32 digest) external pure returns (uint8 v, bytes32 r, bytes32 s);
    function addr(uint256 privateKey) external pure returns (address);
    function assume(bool) external pure;
    function chainId(uint256) external;
    function label(address, string calldata) external;
}

abstract contract Base {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    uint256 internal constant BUYER_PK = 0xB0B;
    uint256 internal constant PROVIDER_PK = 0x5717;
    uint256 internal constant VENDOR_PK = 0xCA1C0;
    uint256 internal constant ARBITER_PK = 0xA4B;
    uint256 internal constant BOND = 10 ether;
    uint64 internal constant DISPUTE_WINDOW = 1 days;
    uint64 internal constant ARBITRATION_PERIOD = 3 days;
    bytes32 internal constant EVIDENCE = keccak256("evidence blob root");
    bytes32 internal constant ROOT = keccak256("kaiko-trades-2026");
    bytes32 internal constant NODE_ID = keccak256("stimergy-node");

    address internal buyer;
    address internal provider;
    address internal vendor;
    address internal arbiter;

    BDCToken internal token;
    DatasetRegistry internal registry;
    TransferEscrow internal escrow;

    function setUp() public virtual {
        vm.warp(1_764_000_000);
        buyer = vm.addr(BUYER_PK);
        provider = vm.addr(PROVIDER_PK);
        vendor = vm.addr(VENDOR_PK);
        arbiter = vm.addr(ARBITER_PK);
        token = new BDCToken(address(this), 0, true);
        registry = new DatasetRegistry();
        escrow = new TransferEscrow(token, registry, BOND, DISPUTE_WINDOW, ARBITRATION_PERIOD);
        vm.prank(vendor);
        registry.register(ROOT, 1_000, keccak256("manifest"), 1 ether);
        token.faucet(buyer, 1_000_000 ether);
        vm.prank(buyer);
        token.approve(address(escrow), type(uint256).max);
    }

    /// Opens a deal as `buyer` and returns its id and terms.
    function open(uint256 maxAmount, uint64 expiry) internal returns (bytes32 id, TransferEscrow.Terms memory t) {
        return openOn(escrow, maxAmount, expiry);
    }

    function openOn(TransferEscrow e, uint256 maxAmount, uint64 expiry)
        internal
        returns (bytes32 id, TransferEscrow.Terms memory t)
    {
        t = TransferEscrow.Terms({
            buyer: buyer,
            provider: provider,
            arbiter: arbiter,
            vendor: vendor,
            royaltyBps: 1_000,
            providerNodeId: NODE_ID,
            datasetRoot: ROOT,
            pricePerByte: 1e9,
            // forge-lint: disable-next-line(unsafe-typecast)
            maxAmount: uint96(maxAmount),
            window: 4 << 20,
            expiry: expiry,
            disputeWindow: e.disputeWindow(),
            nonce: e.dealCount()
        });
        vm.prank(buyer);
        id = e.openDeal(provider, NODE_ID, ROOT, 1e9, maxAmount, 4 << 20, expiry, arbiter);
        require(id == keccak256(abi.encode(t)), "deal id is the hash of the terms");
    }

    function sign(uint256 pk, TransferEscrow e, bytes32 id, uint256 amount) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, e.receiptDigest(id, amount));
        return abi.encodePacked(r, s, v);
    }

    function receipt(bytes32 id, uint256 amount) internal view returns (bytes memory) {
        return sign(BUYER_PK, escrow, id, amount);
    }

    function assertEq(uint256 a, uint256 b, string memory what) internal pure {
        if (a != b) revert(string.concat(what, ": ", _str(a), " != ", _str(b)));
    }

    function _str(uint256 v) private pure returns (string memory) {
        if (v == 0) return "0";
        bytes memory b;
        while (v > 0) {
            b = abi.encodePacked(bytes1(uint8(48 + v % 10)), b);
            v /= 10;
        }
        return string(b);
    }
}
