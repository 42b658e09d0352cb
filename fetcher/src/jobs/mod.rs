//! Compute jobs from the buyer's side (`bdc/jobs/1`).
//!
//! [`Fetcher::run_job`] sends the job, follows its status, checks the provider's signed result
//! manifest ([`check_result`]: signature, signer, dataset, query, format), then fetches the result
//! root, which iroh-blobs verifies chunk group by chunk group, and exports it under `name`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use alloy::{
    primitives::{Address, B256, U256},
    sol_types::SolValue,
};
use bdc_contracts::{
    client::OpenDeal,
    receipt::{sign_hello_sync, sign_receipt_sync},
};
use bdc_core::{
    BlobFormat,
    jobs::{
        JOBS_PROTOCOL_VERSION, JobPayment, JobRequest, JobSpec, JobUpdate, MAX_UPDATE_BYTES, ResultFormat,
        SignedJobResult, codes, frame,
    },
    paid::SignedReceipt,
    protocol::JOBS_ALPN,
    ticket::BlobTicket,
};
use iroh::endpoint::{Connection, RecvStream, SendStream};

mod check;

use check::update_name;
pub use check::{JobError, JobProtocolError, Rejection, check_result};

use crate::{
    BadRequest, FetchError, FetchEvent, FetchOptions, FetchReport, Fetcher,
    paid::{BuyerDeal, DealBook, PaidError, Wallet},
};

/// Progress of a job.
#[derive(Debug, Clone)]
pub enum JobEvent {
    /// Accepted; `ahead` jobs run first.
    Queued {
        ahead: u32,
    },
    /// The provider asked for the container image; it is being uploaded.
    UploadingImage,
    /// The dataset is sold: a job deal for `price` is being opened.
    Paying {
        price: u128,
    },
    Running,
    /// Finished and its manifest checked; the result is being fetched.
    Done {
        rows: u64,
        bytes: u64,
    },
    Fetch(FetchEvent),
}

/// How a buyer pays for jobs on sold datasets: it opens one job deal per job (price per byte 0,
/// window 0, `maxAmount` = the provider's price), and signs one receipt for the price once the
/// result is fetched and verified. A failed job is not paid; its deal is refunded after expiry.
#[derive(Debug, Clone)]
pub struct JobPay {
    pub wallet: Wallet,
    /// The arbiters this buyer trusts: the job deal names the first the provider accepts.
    pub arbiters: Vec<Address>,
    pub deal_duration: Duration,
    /// Refuse a provider asking more than this per job, token base units.
    pub max_price: Option<u128>,
}

/// A provider's `PaymentRequired` answer.
struct Quote<'a> {
    price: u128,
    provider: [u8; 20],
    chain_id: u64,
    escrow: [u8; 20],
    arbiters: &'a [[u8; 20]],
}

/// A paid job's stream between `Done` and the receipt.
struct Unpaid {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    deal: B256,
    price: u128,
}

/// A finished, checked and fetched job.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    /// The job deal that paid for it, and the amount receipted.
    pub deal: Option<B256>,
    pub paid: u128,
    pub signed: SignedJobResult,
    /// The address that signed the manifest.
    pub signer: Address,
    /// Where the result was written.
    pub file: PathBuf,
    pub fetch: FetchReport,
}

async fn read_update(recv: &mut RecvStream) -> Result<Option<JobUpdate>, JobProtocolError> {
    bdc_core::jobs::read(recv, MAX_UPDATE_BYTES).await.map_err(JobProtocolError::Read)
}

impl From<PaidError> for JobError {
    fn from(e: PaidError) -> Self {
        Self::Fetch(FetchError::from(e))
    }
}

impl Fetcher {
    /// Runs `spec` on the dataset of `ticket` at its provider, checks the signed result and
    /// fetches it into `out/name`.
    pub async fn run_job(
        &self,
        ticket: &BlobTicket,
        spec: JobSpec,
        expect_signer: Option<Address>,
        out: &Path,
        name: &str,
        on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        self.submit(ticket, spec, None, expect_signer, None, out, name, on).await
    }

    /// [`Self::run_job`] (a SQL job), paying with a job deal when the dataset is sold.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_paid_job(
        &self,
        ticket: &BlobTicket,
        spec: JobSpec,
        expect_signer: Option<Address>,
        pay: &JobPay,
        out: &Path,
        name: &str,
        on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        self.submit(ticket, spec, None, expect_signer, Some(pay), out, name, on).await
    }

    /// Runs `cmd` in the OCI image of `archive` (uploaded if the provider does not have it) with
    /// the dataset of `ticket` at `/data`; fetches what it wrote to `/out` into `out`. With
    /// `pay`, a job on a sold dataset is paid with a job deal.
    #[allow(clippy::too_many_arguments)]
    pub async fn run_container(
        &self,
        ticket: &BlobTicket,
        archive: &Path,
        cmd: Vec<String>,
        expect_signer: Option<Address>,
        pay: Option<&JobPay>,
        out: &Path,
        on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        let local = |source: std::io::Error| FetchError::Read { path: archive.to_path_buf(), source };
        let image_size = std::fs::metadata(archive).map_err(local)?.len();
        let a = archive.to_path_buf();
        let image_sha256 = tokio::task::spawn_blocking(move || bdc_core::jobs::file_sha256(&a))
            .await
            .map_err(FetchError::store)?
            .map_err(local)?;
        let spec = JobSpec::Container { image_sha256, image_size, cmd };
        self.submit(ticket, spec, Some(archive), expect_signer, pay, out, "", on).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn submit(
        &self,
        ticket: &BlobTicket,
        spec: JobSpec,
        image: Option<&Path>,
        expect_signer: Option<Address>,
        pay: Option<&JobPay>,
        out: &Path,
        name: &str,
        mut on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        let (signed, signer, unpaid) = self.execute(ticket, spec, image, expect_signer, pay, &mut on).await?;
        let fetched = self.fetch_result(ticket, signed, signer, out, name, on).await;
        match (fetched, unpaid, pay) {
            (Ok(mut outcome), Some(u), Some(pay)) => {
                outcome.deal = Some(u.deal);
                outcome.paid = self.pay_job(ticket, u, pay).await?;
                Ok(outcome)
            }
            // a result that did not verify is not paid for
            (Err(e), Some(u), _) => {
                u.conn.close(0u32.into(), b"result not verified");
                Err(e)
            }
            (res, _, _) => res,
        }
    }

    /// Opens a job deal for `price` with the provider that quoted it; the request's payment.
    async fn open_job_deal(
        &self,
        ticket: &BlobTicket,
        pay: &JobPay,
        quote: Quote<'_>,
    ) -> Result<(JobPayment, B256), JobError> {
        let Quote { price, provider, chain_id, escrow, arbiters } = quote;
        let node = ticket.addr().id;
        let chain = &pay.wallet.chain;
        let d = chain.deployment();
        let escrow = Address::from(escrow);
        if chain_id != d.chain_id || escrow != d.escrow {
            return Err(FetchError::from(PaidError::WrongChain {
                offer_chain: chain_id,
                offer_escrow: escrow,
                chain: d.chain_id,
                escrow: d.escrow,
            })
            .into());
        }
        if let Some(max) = pay.max_price
            && price > max
        {
            return Err(FetchError::JobPriceTooHigh { provider: node, price, max }.into());
        }
        let arbiter = crate::paid::choose_arbiter(&pay.arbiters, arbiters).map_err(FetchError::from)?;
        let now = chain.chain_time().await.map_err(|e| FetchError::from(PaidError::from(e)))?;
        let req = OpenDeal {
            provider: Address::from(provider),
            provider_node_id: B256::from(*node.as_bytes()),
            dataset_root: B256::from(*ticket.hash().as_bytes()),
            price_per_byte: 0,
            max_amount: U256::from(price),
            window: 0,
            expiry: now + pay.deal_duration.as_secs(),
            arbiter,
        };
        let signer = &pay.wallet.signer;
        let deal = chain.open_deal(signer.address(), &req).await.map_err(|e| FetchError::from(PaidError::from(e)))?;
        tracing::info!(deal = %deal.id, price, "job deal opened");
        let mut book = DealBook::load(self.data_dir())?;
        book.upsert(BuyerDeal {
            id: deal.id,
            terms: hex::encode(deal.terms.abi_encode()),
            root: ticket.hash(),
            verified: 0,
            paid: 0,
            spent: false,
            confirmed: 0,
        });
        book.save()?;
        let me = B256::from(*self.endpoint().id().as_bytes());
        let hello = sign_hello_sync(signer, &chain.domain(), deal.id, me)
            .map_err(|source| FetchError::Sign { what: "the job request", source })?;
        let payment =
            JobPayment { deal_id: deal.id.0, terms: deal.terms.abi_encode(), hello_sig: hello.as_bytes().to_vec() };
        Ok((payment, deal.id))
    }

    /// Signs and sends the receipt for a fetched, verified paid job; the amount receipted.
    async fn pay_job(&self, ticket: &BlobTicket, mut u: Unpaid, pay: &JobPay) -> Result<u128, JobError> {
        let provider = ticket.addr().id;
        let protocol = |source: JobProtocolError| JobError::Protocol { provider, source };
        let chain = &pay.wallet.chain;
        let sig = sign_receipt_sync(&pay.wallet.signer, &chain.domain(), u.deal, U256::from(u.price))
            .map_err(|source| FetchError::Sign { what: "the receipt", source })?;
        // recorded before it is sent: the book always knows the most this buyer may owe
        let mut book = DealBook::load(self.data_dir())?;
        if let Some(mut d) = book.get(&u.deal).cloned() {
            d.paid = d.paid.max(u.price);
            book.upsert(d);
            book.save()?;
        }
        let receipt = SignedReceipt { deal_id: u.deal.0, cumulative: u.price, sig: sig.as_bytes().to_vec() };
        u.send
            .write_all(&frame(&receipt))
            .await
            .map_err(|source| protocol(JobProtocolError::Send { what: "the receipt", source }))?;
        u.send.finish().map_err(|e| protocol(JobProtocolError::Finish(e)))?;
        let last = read_update(&mut u.recv).await.map_err(protocol)?;
        u.conn.close(0u32.into(), b"done");
        match last {
            Some(JobUpdate::Receipted { amount }) => Ok(amount),
            Some(JobUpdate::Failed { code, reason }) => {
                Err(JobError::Failed { provider, code, name: codes::name(code), reason })
            }
            other => Err(protocol(JobProtocolError::NoAcknowledgement(update_name(&other)))),
        }
    }

    /// Submits a job and follows it to a checked, signed result (not yet fetched). A paid job
    /// comes back with its stream still open, for the receipt.
    async fn execute(
        &self,
        ticket: &BlobTicket,
        spec: JobSpec,
        image: Option<&Path>,
        expect_signer: Option<Address>,
        pay: Option<&JobPay>,
        mut on: impl FnMut(JobEvent),
    ) -> Result<(SignedJobResult, Address, Option<Unpaid>), JobError> {
        let provider = ticket.addr().id;
        let protocol = |source: JobProtocolError| JobError::Protocol { provider, source };
        let mut payment: Option<(JobPayment, B256)> = None;
        let mut price = 0;
        'ask: loop {
            let req = JobRequest {
                version: JOBS_PROTOCOL_VERSION,
                dataset: ticket.hash(),
                spec: spec.clone(),
                payment: payment.as_ref().map(|p| p.0.clone()),
            };
            let paying = payment.is_some();
            let conn = self.connect(ticket, JOBS_ALPN).await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| protocol(JobProtocolError::Open(e)))?;
            send.write_all(&frame(&req))
                .await
                .map_err(|source| protocol(JobProtocolError::Send { what: "the job", source }))?;
            // a container job keeps the stream open in case the provider asks for the image; a
            // paid job keeps it open for the receipt
            let mut open = image.is_some() || paying;
            if !open {
                send.finish().map_err(|e| protocol(JobProtocolError::Finish(e)))?;
            }
            let signed = loop {
                let update = read_update(&mut recv).await.map_err(protocol)?;
                if open && !paying && !matches!(update, Some(JobUpdate::SendImage)) {
                    send.finish().map_err(|e| protocol(JobProtocolError::Finish(e)))?;
                    open = false;
                }
                match update {
                    Some(JobUpdate::SendImage) => {
                        let (Some(path), true) = (image, open) else {
                            return Err(protocol(JobProtocolError::UnaskedImage));
                        };
                        on(JobEvent::UploadingImage);
                        let mut f = tokio::fs::File::open(path)
                            .await
                            .map_err(|source| FetchError::Read { path: path.to_path_buf(), source })?;
                        tokio::io::copy(&mut f, &mut send).await.map_err(|e| protocol(JobProtocolError::Upload(e)))?;
                        if !paying {
                            send.finish().map_err(|e| protocol(JobProtocolError::Finish(e)))?;
                            open = false;
                        }
                    }
                    None => return Err(protocol(JobProtocolError::NoResult)),
                    Some(JobUpdate::Queued { ahead, .. }) => on(JobEvent::Queued { ahead }),
                    Some(JobUpdate::Running) => on(JobEvent::Running),
                    Some(JobUpdate::Failed { code, reason }) => {
                        conn.close(0u32.into(), b"done");
                        return Err(JobError::Failed { provider, code, name: codes::name(code), reason });
                    }
                    Some(JobUpdate::PaymentRequired { price: p, provider: addr, chain_id, escrow, arbiters }) => {
                        conn.close(0u32.into(), b"done");
                        if paying {
                            return Err(protocol(JobProtocolError::PaymentAgain));
                        }
                        let Some(pay) = pay else {
                            return Err(JobError::Failed {
                                provider,
                                code: codes::PAYMENT_REQUIRED,
                                name: codes::name(codes::PAYMENT_REQUIRED),
                                reason: format!(
                                    "the dataset is sold here: a job costs {p} token base units (pay with a job deal)"
                                ),
                            });
                        };
                        on(JobEvent::Paying { price: p });
                        payment = Some(
                            self.open_job_deal(
                                ticket,
                                pay,
                                Quote { price: p, provider: addr, chain_id, escrow, arbiters: &arbiters },
                            )
                            .await?,
                        );
                        price = p;
                        continue 'ask;
                    }
                    Some(JobUpdate::Receipted { .. }) => {
                        return Err(protocol(JobProtocolError::UnsentReceipt));
                    }
                    Some(JobUpdate::Done(s)) => break *s,
                }
            };
            let signer = match check_result(&req, &signed, expect_signer) {
                Ok(s) => s,
                Err(source) => {
                    conn.close(0u32.into(), b"rejected");
                    return Err(JobError::Rejected { provider, source });
                }
            };
            on(JobEvent::Done { rows: signed.result.rows, bytes: signed.result.bytes });
            let unpaid = match payment {
                Some((_, deal)) => Some(Unpaid { conn, send, recv, deal, price }),
                None => {
                    conn.close(0u32.into(), b"done");
                    None
                }
            };
            return Ok((signed, signer, unpaid));
        }
    }

    /// Fetches a checked result from the provider of `ticket`, verified against its signed root.
    async fn fetch_result(
        &self,
        ticket: &BlobTicket,
        signed: SignedJobResult,
        signer: Address,
        out: &Path,
        name: &str,
        mut on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        let provider = ticket.addr().id;
        let collection = signed.result.format == "collection";
        let format = if collection { BlobFormat::HashSeq } else { BlobFormat::Raw };
        let result_ticket = BlobTicket::new(ticket.addr().clone(), signed.result.result_root, format);
        let opts = FetchOptions { raw_name: Some(name.to_string()), ..Default::default() };
        let fetch = self.fetch(&result_ticket, out, &opts, |e| on(JobEvent::Fetch(e))).await?;
        if !collection && fetch.total_bytes != signed.result.bytes {
            return Err(JobError::Rejected {
                provider,
                source: Rejection::Size { got: fetch.total_bytes, manifest: signed.result.bytes },
            });
        }
        let file = fetch.files.first().map(|f| f.path.clone()).unwrap_or_else(|| out.join(name));
        Ok(JobOutcome { deal: None, paid: 0, signed, signer, file, fetch })
    }
}

/// The default result file name for a job's format.
pub fn result_file_name(format: ResultFormat) -> String {
    format!("result.{}", format.extension())
}

impl Fetcher {
    /// Runs the same SQL job on the first `k` of `replicas` (providers of one dataset, each with
    /// the address its result must be signed by, when the buyer knows it) at once and accepts the
    /// result only when all `k` signed result roots agree; then fetches it from the first. Only
    /// deterministic queries agree: see docs/PROTOCOL.md (ORDER BY over all output columns, no
    /// `random()` or `now()`, same engine version).
    pub async fn run_replicated(
        &self,
        replicas: &[(BlobTicket, Option<Address>)],
        k: usize,
        spec: JobSpec,
        out: &Path,
        name: &str,
        mut on: impl FnMut(JobEvent),
    ) -> Result<JobOutcome, JobError> {
        let tickets: Vec<&BlobTicket> = replicas.iter().map(|(t, _)| t).collect();
        let first = *tickets.first().ok_or(FetchError::BadRequest(BadRequest::NoProvider))?;
        if k == 0 || k > tickets.len() {
            return Err(FetchError::from(BadRequest::TooFewReplicas { k, given: tickets.len() }).into());
        }
        if let Some(t) = tickets[..k].iter().find(|t| t.hash() != first.hash()) {
            return Err(FetchError::from(BadRequest::DifferentDatasets(first.hash(), t.hash())).into());
        }
        let runs = replicas[..k].iter().map(|(t, signer)| self.execute(t, spec.clone(), None, *signer, None, |_| {}));
        let results = n0_future::join_all(runs).await;
        let mut done = Vec::with_capacity(k);
        for r in results {
            done.push(r?);
        }
        let root = done[0].0.result.result_root;
        if done.iter().any(|(s, _, _)| s.result.result_root != root) {
            let roots =
                tickets[..k].iter().zip(&done).map(|(t, (s, _, _))| (t.addr().id, s.result.result_root)).collect();
            return Err(JobError::Disagree { k, roots });
        }
        let (signed, signer, _) = done.swap_remove(0);
        on(JobEvent::Done { rows: signed.result.rows, bytes: signed.result.bytes });
        self.fetch_result(first, signed, signer, out, name, on).await
    }
}
