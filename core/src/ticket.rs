//! Dataset tickets.
//!
//! A ticket is an iroh-blobs [`BlobTicket`]: the provider's `EndpointAddr` (id + direct
//! addresses), the dataset root and its format (raw blob or collection). Using the standard
//! ticket keeps free datasets fetchable by any iroh-blobs client, e.g. `sendme receive`.

use std::str::FromStr;

pub use iroh_blobs::ticket::BlobTicket;

/// Why a ticket string was refused (`shown`: its first characters).
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("malformed ticket {shown:?}: a bdc ticket starts with `blob`")]
    Prefix { shown: String },
    #[error("malformed ticket {shown:?}: {source}")]
    Parse {
        shown: String,
        #[source]
        source: <BlobTicket as FromStr>::Err,
    },
}

/// Parses a ticket, with an error that names what was wrong.
pub fn parse_ticket(s: &str) -> Result<BlobTicket, TicketError> {
    let t = s.trim();
    let shown: String = if t.len() > 24 { format!("{}…", &t[..t.floor_char_boundary(24)]) } else { t.to_string() };
    if !t.starts_with("blob") {
        return Err(TicketError::Prefix { shown });
    }
    BlobTicket::from_str(t).map_err(|source| TicketError::Parse { shown, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh::{EndpointAddr, SecretKey};
    use iroh_blobs::{BlobFormat, Hash};

    #[test]
    fn roundtrip_and_errors() {
        let id = SecretKey::from_bytes(&[7u8; 32]).public();
        let t = BlobTicket::new(EndpointAddr::new(id), Hash::new(b"d"), BlobFormat::HashSeq);
        let back = parse_ticket(&t.to_string()).unwrap();
        assert_eq!(back.hash(), t.hash());
        assert!(parse_ticket("hello").unwrap_err().to_string().contains("malformed ticket"));
        let mut s = t.to_string();
        s.truncate(s.len() - 5);
        assert!(parse_ticket(&s).is_err());
    }
}
