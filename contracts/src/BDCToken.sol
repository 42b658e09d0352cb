// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// @title BDC token
/// @notice ERC-20 with EIP-2612 permit. Deals in the escrow are priced and paid in BDC.
/// @dev The faucet exists only when deployed with `faucetEnabled` (devnets); it is fixed at deploy.
contract BDCToken is ERC20, ERC20Permit {
    /// @notice Whether anyone may mint with `faucet` (true only on devnets).
    bool public immutable faucetEnabled;
    /// @notice Largest amount one faucet call mints.
    uint256 public constant FAUCET_MAX = 1_000_000 ether;

    error FaucetDisabled();
    error FaucetAmountTooLarge(uint256 amount, uint256 max);

    constructor(address initialHolder, uint256 initialSupply, bool faucetEnabled_)
        ERC20("BDC", "BDC")
        ERC20Permit("BDC")
    {
        faucetEnabled = faucetEnabled_;
        if (initialSupply > 0) _mint(initialHolder, initialSupply);
    }

    /// @notice Devnet faucet: mints `amount` to `to`.
    function faucet(address to, uint256 amount) external {
        if (!faucetEnabled) revert FaucetDisabled();
        if (amount > FAUCET_MAX) revert FaucetAmountTooLarge(amount, FAUCET_MAX);
        _mint(to, amount);
    }
}
