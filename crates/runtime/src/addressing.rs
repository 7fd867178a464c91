//! Endpoint addressing: `namespace/component/endpoint`, its `dyn://` URI, and the NATS
//! subjects and discovery keys derived from it.

use std::fmt;

/// One endpoint of one component in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointId {
    pub namespace: String,
    pub component: String,
    pub endpoint: String,
}

/// A name part was empty or held characters NATS subjects cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} name {value:?}: use letters, digits, '-' and '_'")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
}

fn check(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidName {
            what,
            value: value.to_string(),
        })
    }
}

impl EndpointId {
    pub fn new(namespace: &str, component: &str, endpoint: &str) -> Result<Self, InvalidName> {
        check("namespace", namespace)?;
        check("component", component)?;
        check("endpoint", endpoint)?;
        Ok(EndpointId {
            namespace: namespace.into(),
            component: component.into(),
            endpoint: endpoint.into(),
        })
    }

    /// Parse `namespace/component/endpoint` or `dyn://namespace.component.endpoint`.
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let parts: Vec<&str> = match s.strip_prefix("dyn://") {
            Some(rest) => rest.split('.').collect(),
            None => s.split('/').collect(),
        };
        if parts.len() != 3 {
            return Err(InvalidName {
                what: "endpoint path",
                value: s.into(),
            });
        }
        Self::new(parts[0], parts[1], parts[2])
    }

    /// `dyn://{namespace}.{component}.{endpoint}`
    pub fn uri(&self) -> String {
        format!(
            "dyn://{}.{}.{}",
            self.namespace, self.component, self.endpoint
        )
    }

    /// The subject one instance listens on:
    /// `{namespace}_{component}.{endpoint}-{instance_id as lowercase hex}`.
    pub fn instance_subject(&self, instance_id: u64) -> String {
        format!(
            "{}_{}.{}-{:x}",
            self.namespace, self.component, self.endpoint, instance_id
        )
    }

    /// Subject on which callers ask an instance to cancel a request.
    pub fn cancel_subject(&self, instance_id: u64) -> String {
        format!("{}.cancel", self.instance_subject(instance_id))
    }

    /// Discovery key prefix of this endpoint's instances.
    pub fn discovery_prefix(&self) -> String {
        format!(
            "instances.{}.{}.{}",
            self.namespace, self.component, self.endpoint
        )
    }

    /// Discovery key of one instance.
    pub fn discovery_key(&self, instance_id: u64) -> String {
        format!("{}.{:016x}", self.discovery_prefix(), instance_id)
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.component, self.endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_spec_shape() {
        let id = EndpointId::new("dynamo", "backend", "generate").unwrap();
        assert_eq!(id.uri(), "dyn://dynamo.backend.generate");
        assert_eq!(
            id.instance_subject(0x694d98147d54be25),
            "dynamo_backend.generate-694d98147d54be25"
        );
        assert_eq!(
            id.discovery_key(1),
            "instances.dynamo.backend.generate.0000000000000001"
        );
    }

    #[test]
    fn parse_both_forms_and_reject_bad_names() {
        let a = EndpointId::parse("dynamo/backend/generate").unwrap();
        let b = EndpointId::parse("dyn://dynamo.backend.generate").unwrap();
        assert_eq!(a, b);
        assert!(EndpointId::parse("dynamo/backend").is_err());
        assert!(EndpointId::new("dy.namo", "b", "g").is_err());
        assert!(EndpointId::new("", "b", "g").is_err());
        assert!(EndpointId::new("a", "b c", "g").is_err());
    }
}
