// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {BDCToken} from "../src/BDCToken.sol";
import {DatasetRegistry} from "../src/DatasetRegistry.sol";
import {FeedRegistry} from "../src/FeedRegistry.sol";
import {TransferEscrow} from "../src/TransferEscrow.sol";

interface VmScript {
    function startBroadcast() external;
    function stopBroadcast() external;
    function envOr(string calldata name, bool defaultValue) external view returns (bool);
    function envOr(string calldata name, uint256 defaultValue) external view returns (uint256);
    function envOr(string calldata name, address defaultValue) external view returns (address);
}

/// @notice Deploys token, registry, escrow and feed registry.
/// `forge script script/Deploy.s.sol --rpc-url $RPC --private-key $KEY --broadcast`
/// Settings (environment): BDC_FAUCET (bool, default false), BDC_INITIAL_HOLDER + BDC_INITIAL_SUPPLY,
/// BDC_DISPUTE_BOND (base units, default 10 BDC), BDC_DISPUTE_WINDOW (seconds, default 1 day),
/// BDC_ARBITRATION_PERIOD (seconds an arbiter has to rule, default 3 days), BDC_FEED_UNSTAKE_DELAY
/// (seconds between closing a feed and taking its stake back, default 7 days).
contract Deploy {
    VmScript internal constant vm = VmScript(address(uint160(uint256(keccak256("hevm cheat code")))));

    function run()
        external
        returns (BDCToken token, DatasetRegistry registry, TransferEscrow escrow, FeedRegistry feeds)
    {
        bool faucet = vm.envOr("BDC_FAUCET", false);
        address holder = vm.envOr("BDC_INITIAL_HOLDER", address(0));
        uint256 supply = vm.envOr("BDC_INITIAL_SUPPLY", uint256(0));
        uint256 bond = vm.envOr("BDC_DISPUTE_BOND", uint256(10 ether));
        uint256 window = vm.envOr("BDC_DISPUTE_WINDOW", uint256(1 days));
        require(window <= type(uint64).max, "BDC_DISPUTE_WINDOW too large");
        uint256 ruling = vm.envOr("BDC_ARBITRATION_PERIOD", uint256(3 days));
        require(ruling <= type(uint64).max, "BDC_ARBITRATION_PERIOD too large");
        uint256 unstake = vm.envOr("BDC_FEED_UNSTAKE_DELAY", uint256(7 days));
        require(unstake <= type(uint64).max, "BDC_FEED_UNSTAKE_DELAY too large");
        vm.startBroadcast();
        token = new BDCToken(holder, supply, faucet);
        registry = new DatasetRegistry();
        // forge-lint: disable-next-line(unsafe-typecast)
        escrow = new TransferEscrow(token, registry, bond, uint64(window), uint64(ruling));
        // forge-lint: disable-next-line(unsafe-typecast)
        feeds = new FeedRegistry(token, uint64(unstake));
        vm.stopBroadcast();
    }
}
