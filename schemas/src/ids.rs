//! Identifiers: a type prefix plus 20 lowercase base32 characters drawn from
//! a CSPRNG (100 bits), e.g. `srv-d0c5q8k2m9t1v3x7z4b6`.
//!
//! Every id type validates on parse and on deserialisation, so a malformed id
//! from the bus or the API is rejected at the edge, never stored.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of the random part of every id.
pub const ID_RANDOM_LEN: usize = 20;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The prefix is missing or belongs to another kind of id.
    #[error("id {got:?} must start with {expected:?}")]
    WrongPrefix { expected: &'static str, got: String },
    /// The part after the prefix is not 20 lowercase base32 characters.
    #[error("id {got:?} must be {expected}- followed by 20 characters of [a-z2-7]")]
    BadBody { expected: &'static str, got: String },
}

/// RFC 4648 base32 alphabet, lowercase, no padding.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn random_body() -> String {
    let mut bytes = [0u8; ID_RANDOM_LEN];
    rand::rng().fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect()
}

#[cfg(test)]
#[test]
fn body_check_accepts_exactly_the_alphabet() {
    for b in 0..=255u8 {
        let body: String = std::iter::repeat_n(b as char, ID_RANDOM_LEN).collect();
        let ok = check("srv", &format!("srv-{body}")).is_ok();
        assert_eq!(ok, b.is_ascii() && ALPHABET.contains(&b), "byte {b}");
    }
}

fn check(prefix: &'static str, s: &str) -> Result<(), IdError> {
    let body = s
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .ok_or_else(|| IdError::WrongPrefix {
            expected: prefix,
            got: truncate(s),
        })?;
    // A range test, not `ALPHABET.contains`: ids are checked on every
    // decode, and a memchr per byte showed in the hook path's profile.
    if body.len() == ID_RANDOM_LEN && body.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')) {
        Ok(())
    } else {
        Err(IdError::BadBody {
            expected: prefix,
            got: truncate(s),
        })
    }
}

/// A checked body (20 characters of [`ALPHABET`]) as a number.
fn body_bits(body: &str) -> u128 {
    body.bytes().fold(0, |acc, b| {
        let v = match b {
            b'a'..=b'z' => b - b'a',
            _ => b.wrapping_sub(b'2').wrapping_add(26) & 31,
        };
        (acc << 5) | u128::from(v)
    })
}

/// The body whose number is `bits` (its low 100 bits).
fn bits_body(bits: u128) -> String {
    (0..ID_RANDOM_LEN)
        .rev()
        .map(|i| ALPHABET[((bits >> (5 * i)) & 31) as usize] as char)
        .collect()
}

/// Error messages echo at most a short prefix of hostile input.
fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id.
            pub fn generate() -> Self {
                Self(format!("{}-{}", $prefix, random_body()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's random part as a number (5 bits a character, 100
            /// in all): what a read model holding many ids keeps instead
            /// of the text.
            pub fn bits(&self) -> u128 {
                body_bits(&self.0[$prefix.len() + 1..])
            }

            /// The id whose random part is `bits` (as [`Self::bits`] gave).
            pub fn from_bits(bits: u128) -> Self {
                Self(format!("{}-{}", $prefix, bits_body(bits)))
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                check($prefix, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": concat!("^", $prefix, "-[a-z2-7]{20}$")
                })
            }
        }
    };
}

id_type!(
    /// A user owner.
    UserId, "usr");
id_type!(
    /// A team owner.
    TeamId, "tea");
id_type!(
    /// A service of any type.
    ServiceId, "srv");
id_type!(
    /// A registry credential.
    CredentialId, "rgc");
id_type!(
    /// One attempt to make an image digest live.
    DeployId, "dep");
id_type!(
    /// One running container of a service on one node.
    InstanceId, "ins");
id_type!(
    /// One execution of a cron job.
    CronRunId, "crn");
id_type!(
    /// One one-off job: a command run once in a container of a service's
    /// image and configuration (Render's jobs).
    JobId, "job");
id_type!(
    /// A service's persistent disk.
    DiskId, "dsk");
id_type!(
    /// A snapshot of a service's disk (Render's `snapshotKey`).
    DiskSnapshotKey, "snp");
id_type!(
    /// A machine running the puller and the agent.
    NodeId, "nod");
id_type!(
    /// One entry of the event log.
    EventId, "evt");
id_type!(
    /// An API key (the id, never the secret).
    ApiKeyId, "key");
id_type!(
    /// One notification delivery (stable across retries; the `webhook-id`).
    DeliveryId, "ntf");
id_type!(
    /// An integration: NATS credentials bound to one owner, for programs
    /// that send bus commands and read that owner's service events.
    IntegrationId, "itg");
id_type!(
    /// One of an owner's webhooks (Render's `whk-…`): an endpoint sent
    /// the owner's service events, signed.
    WebhookId, "whk");
id_type!(
    /// A custom domain attached to a web service (Render's `cdm-…`): one
    /// attachment, a fresh id each time a name is added.
    CustomDomainId, "cdm");
id_type!(
    /// The claim on one custom domain name across the installation: derived
    /// from the normalised name ([`DomainId::of_name`]), so every process
    /// finds the same aggregate for the same name (a name itself cannot be
    /// a subject token: it has dots).
    DomainId, "dom");

impl DomainId {
    /// The claim id of `name` (already normalised: lowercase, no trailing
    /// dot): the first 100 bits of its SHA-256 in base32. Two names share
    /// an id only on a SHA-256 collision of that prefix.
    pub fn of_name(name: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(name.as_bytes());
        let mut bits: u128 = 0;
        for b in &digest[..16] {
            bits = (bits << 8) | u128::from(*b);
        }
        let body: String = (0..ID_RANDOM_LEN)
            .map(|i| ALPHABET[((bits >> (123 - 5 * i)) & 31) as usize] as char)
            .collect();
        Self(format!("dom-{body}"))
    }
}

/// An owner of services and credentials: a user or a team.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OwnerId {
    /// `usr-…`
    User(UserId),
    /// `tea-…`
    Team(TeamId),
}

impl OwnerId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        match self {
            OwnerId::User(u) => u.as_str(),
            OwnerId::Team(t) => t.as_str(),
        }
    }
}

impl FromStr for OwnerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.starts_with("tea-") {
            Ok(OwnerId::Team(s.parse()?))
        } else {
            Ok(OwnerId::User(s.parse()?))
        }
    }
}

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_prefix_and_twenty_base32_chars() {
        let id = ServiceId::generate();
        let s = id.to_string();
        assert!(s.starts_with("srv-"));
        assert_eq!(s.len(), 4 + ID_RANDOM_LEN);
        assert_eq!(s.parse::<ServiceId>(), Ok(id));
    }

    #[test]
    fn an_id_and_its_bits_give_each_other() {
        for _ in 0..1000 {
            let id = EventId::generate();
            assert_eq!(EventId::from_bits(id.bits()), id);
        }
        let bits = |s: &str| s.parse::<EventId>().map(|id| id.bits());
        assert_eq!(bits("evt-aaaaaaaaaaaaaaaaaaaa"), Ok(0));
        assert_eq!(bits("evt-77777777777777777777"), Ok((1u128 << 100) - 1));
        assert_eq!(bits("evt-aaaaaaaaaaaaaaaaaaab"), Ok(1));
        assert_eq!(bits("evt-aaaaaaaaaaaaaaaaaaa2"), Ok(26));
    }

    #[test]
    fn ids_are_not_repeated() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| DeployId::generate()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "srv-",
            "srv-abc",
            "dep-aaaaaaaaaaaaaaaaaaaa",
            "srv-AAAAAAAAAAAAAAAAAAAA",
            "srv-aaaaaaaaaaaaaaaaaaa1",
            "srv-aaaaaaaaaaaaaaaaaaaaa",
            "srvaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(bad.parse::<ServiceId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn owner_ids_accept_users_and_teams_only() {
        let u = UserId::generate().to_string();
        let t = TeamId::generate().to_string();
        assert!(matches!(u.parse::<OwnerId>(), Ok(OwnerId::User(_))));
        assert!(matches!(t.parse::<OwnerId>(), Ok(OwnerId::Team(_))));
        assert!(ServiceId::generate()
            .to_string()
            .parse::<OwnerId>()
            .is_err());
    }

    #[test]
    fn domain_ids_derive_from_the_name() {
        let a = DomainId::of_name("www.example.com");
        assert_eq!(a, DomainId::of_name("www.example.com"));
        assert_ne!(a, DomainId::of_name("example.com"));
        assert_eq!(a.as_str().parse::<DomainId>(), Ok(a.clone()));
    }

    #[test]
    fn deserialising_checks_the_id() {
        let ok: Result<ServiceId, _> = serde_json::from_str("\"srv-abcdefghijklmnopqrst\"");
        assert!(ok.is_ok());
        let bad: Result<ServiceId, _> = serde_json::from_str("\"srv-../../etc\"");
        assert!(bad.is_err());
    }
}
