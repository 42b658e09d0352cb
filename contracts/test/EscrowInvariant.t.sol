// SPDX-License-Identifier: MIT
pragma solidity ^0.8.30;

import {Base, Vm} from "./Base.sol";
import {BDCToken} from "../src/BDCToken.sol";
import {TransferEscrow} from "../src/TransferEscrow.sol";

/// @dev Drives the escrow with random valid operations and keeps an independent model of what
/// every account should hold. Any call the model says must succeed is made unguarded, so an
/// unexpected revert fails the run (fail_on_revert).
contract Handler {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    struct Model {
        uint256 redeemed;
        uint256 paidOut;
        uint256 releaseAt;
        bool refunded;
        bool disputed;
    }

    BDCToken public token;
    TransferEscrow public escrow;
    uint256[3] internal buyerPks = [uint256(0xB1), 0xB2, 0xB3];
    address public provider;
    address public vendor;
    address public arbiter;
    bytes32 public root;
    uint16 public royaltyBps;
    uint256 public bond;

    TransferEscrow.Terms[] internal terms;
    Model[] internal models;
    mapping(address => uint256) public expected;
    address[] public actors;

    constructor(BDCToken t, TransferEscrow e, address p, address v, address a, bytes32 r, uint16 bps) {
        token = t;
        escrow = e;
        provider = p;
        vendor = v;
        arbiter = a;
        root = r;
        royaltyBps = bps;
        bond = e.disputeBond();
        for (uint256 i = 0; i < 3; i++) {
            address b = vm.addr(buyerPks[i]);
            t.faucet(b, 1_000_000 ether);
            vm.prank(b);
            t.approve(address(e), type(uint256).max);
            expected[b] = 1_000_000 ether;
            actors.push(b);
        }
        actors.push(p);
        actors.push(v);
        actors.push(a);
    }

    function dealCount() external view returns (uint256) {
        return terms.length;
    }

    function termsAt(uint256 i) external view returns (TransferEscrow.Terms memory) {
        return terms[i];
    }

    function modelOwed(uint256 i) public view returns (uint256 o) {
        Model storage m = models[i];
        o = m.redeemed - m.paidOut;
        if (!m.refunded) o += terms[i].maxAmount - m.redeemed;
        if (m.disputed) o += bond;
    }

    function actorCount() external view returns (uint256) {
        return actors.length;
    }

    // ---------------------------------------------------------------- actions

    function openDeal(uint256 who, uint256 amount, uint256 duration) external {
        uint256 pk = buyerPks[who % 3];
        address b = vm.addr(pk);
        amount = 1 + amount % 1_000 ether;
        if (expected[b] < amount + bond) return;
        uint64 expiry = uint64(block.timestamp + 1 hours + duration % 30 days);
        TransferEscrow.Terms memory t = TransferEscrow.Terms({
            buyer: b,
            provider: provider,
            arbiter: arbiter,
            vendor: vendor,
            royaltyBps: royaltyBps,
            providerNodeId: bytes32(0),
            datasetRoot: root,
            pricePerByte: 1,
            // forge-lint: disable-next-line(unsafe-typecast)
            maxAmount: uint96(amount),
            window: 65536,
            expiry: expiry,
            disputeWindow: escrow.disputeWindow(),
            nonce: escrow.dealCount()
        });
        vm.prank(b);
        bytes32 id = escrow.openDeal(provider, bytes32(0), root, 1, amount, 65536, expiry, arbiter);
        require(id == keccak256(abi.encode(t)), "deal id");
        terms.push(t);
        models.push(Model(0, 0, 0, false, false));
        expected[b] -= amount;
    }

    function redeem(uint256 i, uint256 amount) external {
        if (terms.length == 0) return;
        i %= terms.length;
        TransferEscrow.Terms memory t = terms[i];
        Model storage m = models[i];
        if (m.refunded || block.timestamp >= t.expiry) return;
        amount = amount % (uint256(t.maxAmount) * 2 + 1);
        bytes32 id = keccak256(abi.encode(t));
        uint256 pk = _pkOf(t.buyer);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(pk, escrow.receiptDigest(id, amount));
        vm.prank(t.provider);
        uint256 got = escrow.redeem(t, amount, abi.encodePacked(r, s, v));
        uint256 capped = amount < t.maxAmount ? amount : t.maxAmount;
        uint256 want = capped > m.redeemed ? capped - m.redeemed : 0;
        require(got == want, "redeem delta");
        if (want > 0) {
            m.redeemed = capped;
            // while disputed, releaseAt is the arbiter's deadline
            if (!m.disputed) m.releaseAt = block.timestamp + t.disputeWindow;
        }
    }

    function withdraw(uint256 i) external {
        if (terms.length == 0) return;
        i %= terms.length;
        Model storage m = models[i];
        if (m.disputed || block.timestamp < m.releaseAt || m.redeemed == m.paidOut) return;
        uint256 pending = m.redeemed - m.paidOut;
        (uint256 p, uint256 v) = escrow.withdraw(terms[i]);
        uint256 royalty = pending * royaltyBps / 10_000;
        require(v == royalty && p == pending - royalty, "split");
        m.paidOut = m.redeemed;
        expected[vendor] += royalty;
        expected[provider] += pending - royalty;
    }

    function refund(uint256 i) external {
        if (terms.length == 0) return;
        i %= terms.length;
        TransferEscrow.Terms memory t = terms[i];
        Model storage m = models[i];
        if (m.refunded || block.timestamp < t.expiry) return;
        uint256 got = escrow.refund(t);
        require(got == t.maxAmount - m.redeemed, "refund amount");
        m.refunded = true;
        expected[t.buyer] += got;
    }

    function dispute(uint256 i) external {
        if (terms.length == 0) return;
        i %= terms.length;
        TransferEscrow.Terms memory t = terms[i];
        Model storage m = models[i];
        if (m.disputed || m.redeemed == m.paidOut || block.timestamp >= m.releaseAt) return;
        if (expected[t.buyer] < bond) return;
        vm.prank(t.buyer);
        escrow.dispute(t, bytes32(i));
        m.disputed = true;
        m.releaseAt = block.timestamp + escrow.arbitrationPeriod();
        expected[t.buyer] -= bond;
    }

    function resolve(uint256 i, uint256 toBuyer, bool buyerWins) external {
        if (terms.length == 0) return;
        i %= terms.length;
        TransferEscrow.Terms memory t = terms[i];
        Model storage m = models[i];
        if (!m.disputed || block.timestamp >= m.releaseAt) return;
        uint256 pending = m.redeemed - m.paidOut;
        // one ruling in eight returns the whole pot by the sentinel
        bool whole = toBuyer % 8 == 7;
        toBuyer = whole ? pending : toBuyer % (pending + 1);
        uint256 sent = whole ? escrow.WHOLE_POT() : toBuyer;
        vm.prank(arbiter);
        escrow.resolve(t, sent, buyerWins);
        uint256 rest = pending - toBuyer;
        uint256 royalty = rest * royaltyBps / 10_000;
        expected[t.buyer] += toBuyer;
        expected[vendor] += royalty;
        expected[provider] += rest - royalty;
        expected[buyerWins ? t.buyer : provider] += bond;
        m.paidOut = m.redeemed;
        m.disputed = false;
    }

    /// Nobody ruled in time: the default (receipts stand, bond to the provider).
    function settle(uint256 i) external {
        if (terms.length == 0) return;
        i %= terms.length;
        TransferEscrow.Terms memory t = terms[i];
        Model storage m = models[i];
        if (!m.disputed || block.timestamp < m.releaseAt) return;
        uint256 pending = m.redeemed - m.paidOut;
        escrow.settleDispute(t);
        uint256 royalty = pending * royaltyBps / 10_000;
        expected[vendor] += royalty;
        expected[provider] += pending - royalty + bond;
        m.paidOut = m.redeemed;
        m.disputed = false;
    }

    function warp(uint256 secs) external {
        vm.warp(block.timestamp + secs % 3 days);
    }

    function _pkOf(address b) internal view returns (uint256) {
        for (uint256 k = 0; k < 3; k++) {
            if (vm.addr(buyerPks[k]) == b) return buyerPks[k];
        }
        revert("unknown buyer");
    }
}

contract EscrowInvariantTest is Base {
    Handler internal handler;

    function setUp() public override {
        super.setUp();
        handler = new Handler(token, escrow, provider, vendor, arbiter, ROOT, 1_000);
    }

    /// forge's invariant runner calls only these contracts
    function targetContracts() public view returns (address[] memory t) {
        t = new address[](1);
        t[0] = address(handler);
    }

    /// The escrow holds exactly what it owes: open escrow + pending pots + dispute bonds.
    function invariant_balance_equals_owed() public view {
        uint256 sumView;
        uint256 sumModel;
        for (uint256 i = 0; i < handler.dealCount(); i++) {
            sumView += escrow.owed(handler.termsAt(i));
            sumModel += handler.modelOwed(i);
        }
        uint256 bal = token.balanceOf(address(escrow));
        assertEq(bal, sumView, "balance vs owed()");
        assertEq(bal, sumModel, "balance vs model");
    }

    /// Nobody ever holds more (or less) than the model says they were owed.
    function invariant_no_account_gets_more_than_owed() public view {
        for (uint256 i = 0; i < handler.actorCount(); i++) {
            address a = handler.actors(i);
            assertEq(token.balanceOf(a), handler.expected(a), "account balance vs model");
        }
    }
}
