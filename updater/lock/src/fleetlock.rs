//! A FleetLock client (the protocol of Zincati and airlock): `POST
//! {url}/v1/pre-reboot` takes a slot, `POST {url}/v1/steady-state` gives it
//! back, both with the header `fleet-lock-protocol: true` and the body
//! `{"client_params":{"id":..,"group":..}}`. 200 means yes; any other
//! answer means no, with the reason in the body's `kind` and `value`. The
//! server keeps the slots, so nothing survives a reboot on the node.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{Acquire, Error, RebootLock};

const BACKEND: &str = "fleetlock";

/// A FleetLock server's view of one node.
pub struct FleetLock {
    url: String,
    group: String,
    id: String,
    agent: ureq::Agent,
}

/// The request body for node `id` in `group`.
pub fn body(id: &str, group: &str) -> Value {
    json!({ "client_params": { "id": id, "group": group } })
}

/// The reason in a refusal's body (`kind: value`), or the body itself.
pub fn reason(code: u16, text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.get("kind").is_some() => format!(
            "HTTP {code}: {}: {}",
            v["kind"].as_str().unwrap_or("-"),
            v["value"].as_str().unwrap_or("-")
        ),
        _ => format!("HTTP {code}: {:.200}", text.trim()),
    }
}

impl FleetLock {
    /// Node `id` in `group` of the server at `url`.
    pub fn new(url: &str, group: &str, id: &str) -> FleetLock {
        FleetLock {
            url: url.trim_end_matches('/').into(),
            group: group.into(),
            id: id.into(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(3))
                .timeout(Duration::from_secs(10))
                .build(),
        }
    }

    /// POSTs to `path`: Ok(None) for 200, Ok(Some(reason)) for a refusal.
    fn post(&self, path: &str) -> Result<Option<String>, Error> {
        let url = format!("{}{path}", self.url);
        match self
            .agent
            .post(&url)
            .set("fleet-lock-protocol", "true")
            .send_string(&body(&self.id, &self.group).to_string())
        {
            Ok(_) => Ok(None),
            Err(ureq::Error::Status(code, r)) => {
                Ok(Some(reason(code, &r.into_string().unwrap_or_default())))
            }
            Err(e) => Err(Error::Unreachable {
                backend: BACKEND,
                endpoint: url,
                message: e.to_string(),
            }),
        }
    }
}

impl RebootLock for FleetLock {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn acquire(&mut self) -> Result<Acquire, Error> {
        Ok(match self.post("/v1/pre-reboot")? {
            None => Acquire::Granted,
            Some(why) => Acquire::Busy {
                why: format!("the FleetLock server said no: {why}"),
                ahead: None,
            },
        })
    }

    fn release(&mut self) -> Result<(), Error> {
        match self.post("/v1/steady-state")? {
            None => Ok(()),
            Some(why) => Err(Error::Refused {
                backend: BACKEND,
                what: "steady-state".into(),
                message: why,
            }),
        }
    }

    fn token(&self) -> Option<String> {
        None
    }

    fn resume(&mut self, _: Option<&str>) -> Result<bool, Error> {
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_reads_refusals() {
        assert_eq!(
            body("n1", "web").to_string(),
            r#"{"client_params":{"group":"web","id":"n1"}}"#
        );
        assert_eq!(
            reason(409, r#"{"kind":"failed_lock","value":"semaphore full"}"#),
            "HTTP 409: failed_lock: semaphore full"
        );
        assert_eq!(reason(500, "oops\n"), "HTTP 500: oops");
    }
}
