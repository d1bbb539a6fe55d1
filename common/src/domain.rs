use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// An account of the control plane.
    UserId
);
uuid_id!(
    /// A project: one tenant's vectors, documents, keys and plan.
    ProjectId
);

/// The distance a project's indexes use. Fixed at project creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Cosine,
    Euclidean,
    #[serde(rename = "dotproduct")]
    DotProduct,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Cosine, Metric::Euclidean, Metric::DotProduct];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Euclidean => "euclidean",
            Metric::DotProduct => "dotproduct",
        }
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown metric \"{s}\": expected cosine, euclidean or dotproduct"))
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an API key may do. A role is a named set of [`Scope`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read scopes only: search, fetch, query, list.
    AppReadonly,
    /// Read and write scopes.
    AppReadwrite,
    /// Everything, including deleting whole namespaces.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::AppReadonly, Role::AppReadwrite, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::AppReadonly => "app_readonly",
            Role::AppReadwrite => "app_readwrite",
            Role::Admin => "admin",
        }
    }

    /// The scopes this role grants.
    pub fn scopes(self) -> &'static [Scope] {
        match self {
            Role::AppReadonly => &[Scope::Read],
            Role::AppReadwrite => &[Scope::Read, Scope::Write],
            Role::Admin => &[Scope::Read, Scope::Write, Scope::Admin],
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role \"{s}\": expected app_readonly, app_readwrite or admin"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One permission a data-plane operation requires.
///
/// `read`: search, fetch, query, list. `write`: upsert, update, delete records.
/// `admin`: delete whole namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

/// A plan of the catalog with its limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Plan {
    /// Stable id: `starter`, `developer`, `business`, `business_plus`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Searches, queries and fetches admitted per minute, per project.
    pub queries_per_minute: u32,
    /// Vectors or documents written per minute, per project.
    pub documents_per_minute: u32,
    /// Records a project may store across its namespaces.
    pub max_vectors: u64,
    /// Namespaces (collections) a project may have.
    pub max_namespaces: u32,
    /// Vectors or documents in one write request.
    pub max_batch_size: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_metrics_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        for metric in Metric::ALL {
            assert_eq!(metric.as_str().parse::<Metric>(), Ok(metric));
        }
        assert!("owner".parse::<Role>().unwrap_err().contains("app_readonly"));
    }

    #[test]
    fn only_admin_may_administer_and_readonly_may_not_write() {
        assert!(!Role::AppReadonly.scopes().contains(&Scope::Write));
        assert!(Role::AppReadwrite.scopes().contains(&Scope::Write));
        assert!(!Role::AppReadwrite.scopes().contains(&Scope::Admin));
        assert!(Role::Admin.scopes().contains(&Scope::Admin));
    }
}
