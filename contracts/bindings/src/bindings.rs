//! Bindings generated from the committed ABI + bytecode artifacts (`contracts/artifacts/*.json`,
//! refreshed by `make contracts`, checked unchanged by `make test`).

#![allow(missing_docs, clippy::too_many_arguments)]

use alloy::sol;

sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    BDCToken,
    "../artifacts/BDCToken.json"
);

sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    DatasetRegistry,
    "../artifacts/DatasetRegistry.json"
);

sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    FeedRegistry,
    "../artifacts/FeedRegistry.json"
);

sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    TransferEscrow,
    "../artifacts/TransferEscrow.json"
);
