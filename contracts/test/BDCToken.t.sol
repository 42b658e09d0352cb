// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Base} from "./Base.sol";
import {BDCToken} from "../src/BDCToken.sol";

contract BDCTokenTest is Base {
    function test_faucet_mints_on_devnet_only() public {
        token.faucet(address(0xBEEF), 5 ether);
        assertEq(token.balanceOf(address(0xBEEF)), 5 ether, "minted");
        uint256 tooMuch = token.FAUCET_MAX() + 1;
        vm.expectRevert(abi.encodeWithSelector(BDCToken.FaucetAmountTooLarge.selector, tooMuch, tooMuch - 1));
        token.faucet(address(0xBEEF), tooMuch);
        BDCToken mainnet = new BDCToken(address(this), 100 ether, false);
        assertEq(mainnet.totalSupply(), 100 ether, "initial supply");
        vm.expectRevert(BDCToken.FaucetDisabled.selector);
        mainnet.faucet(address(this), 1);
    }

    function test_permit_sets_allowance() public {
        uint256 pk = 0xABCD;
        address owner = vm.addr(pk);
        uint256 deadline = block.timestamp + 60;
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                owner,
                address(this),
                7 ether,
                uint256(0),
                deadline
            )
        );
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(pk, keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash)));
        token.permit(owner, address(this), 7 ether, deadline, v, r, s);
        assertEq(token.allowance(owner, address(this)), 7 ether, "allowance");
        vm.expectRevert();
        token.permit(owner, address(this), 7 ether, deadline, v, r, s);
    }
}
