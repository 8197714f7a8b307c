//! Schema pieces shared by the CRDs: names, quantities and durations.
//!
//! The API server enforces these rules (OpenAPI patterns and CEL `x-kubernetes-validations`), so
//! bad input is refused at `kubectl apply` time with the message written here, before the
//! controller ever sees it.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Longest name of a Team or Workspace. Derived names (`team-<team>`, `<workspace>-home`,
/// `<workspace>.<team>.<baseDomain>`) must stay valid DNS labels, which allow 63 characters.
pub const MAX_NAME_LEN: usize = 40;

/// CEL rule for `metadata.name` of Teams and Workspaces: a DNS label that starts with a letter.
pub const NAME_RULE: &str =
    "self.metadata.name.size() <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')";
/// The message users see when [`NAME_RULE`] fails.
pub const NAME_MESSAGE: &str = "name must be at most 40 characters: lowercase letters, digits and '-', starting with a letter and not ending with '-'";

/// A Kubernetes quantity (`500m`, `2`, `4Gi`), written as a string or an integer, never negative.
pub fn quantity(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "x-kubernetes-validations": [{
            "rule": "type(self) == int ? self >= 0 : isQuantity(self) && quantity(self).compareTo(quantity('0')) >= 0",
            "message": "must be a non-negative Kubernetes quantity such as 500m, 2 or 4Gi"
        }]
    })
}

/// A duration such as `30m`, `8h` or `1h30m`.
pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "maxLength": 32,
        "x-kubernetes-validations": [{
            "rule": "self.matches('^([0-9]+(s|m|h))+$')",
            "message": "must be a duration such as 90s, 30m or 1h30m"
        }]
    })
}
