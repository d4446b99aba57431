//! The VRChat task types (`vrchat.user.current`, `vrchat.user.get`, …) as an [`Adapter`]: their
//! payloads, checked before a task is accepted, and the calls they make on the shared client.

use super::client::segment;
use super::*;
use crate::{Adapter, AdapterHealth};
use async_trait::async_trait;
use mcp_core::{Handler, HandlerError, HandlerRegistry, TaskContext};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// The VRChat web API adapter: the read task types, on one shared session.
#[derive(Debug, Clone)]
pub struct VrchatAdapter {
    client: Arc<VrchatClient>,
}

impl VrchatAdapter {
    pub fn new(config: VrchatConfig) -> Result<Self, String> {
        Ok(VrchatAdapter {
            client: Arc::new(VrchatClient::new(config)?),
        })
    }

    /// The shared client, for the REST passthroughs.
    pub fn client(&self) -> Arc<VrchatClient> {
        self.client.clone()
    }
}

#[async_trait]
impl Adapter for VrchatAdapter {
    fn name(&self) -> &str {
        "vrchat"
    }

    fn task_types(&self) -> Vec<String> {
        [
            FRIENDS_ONLINE,
            INSTANCE_GET,
            USER_CURRENT,
            USER_GET,
            WORLD_GET,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    async fn health(&self) -> AdapterHealth {
        self.client.health()
    }

    fn register(&self, registry: &mut HandlerRegistry) {
        for kind in [
            Kind::CurrentUser,
            Kind::User,
            Kind::World,
            Kind::Instance,
            Kind::FriendsOnline,
        ] {
            registry.register(
                kind.task_type(),
                VrchatTask {
                    kind,
                    client: self.client.clone(),
                },
            );
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    CurrentUser,
    User,
    World,
    Instance,
    FriendsOnline,
}

impl Kind {
    fn task_type(self) -> &'static str {
        match self {
            Kind::CurrentUser => USER_CURRENT,
            Kind::User => USER_GET,
            Kind::World => WORLD_GET,
            Kind::Instance => INSTANCE_GET,
            Kind::FriendsOnline => FRIENDS_ONLINE,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPayload {
    user_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorldPayload {
    world_id: String,
}

/// `{"world_id","instance_id"}` or VRChat's location string `{"location":"wrld_…:12345~…"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancePayload {
    world_id: Option<String>,
    instance_id: Option<String>,
    location: Option<String>,
}

impl InstancePayload {
    fn ids(&self) -> Result<(String, String), String> {
        match (&self.world_id, &self.instance_id, &self.location) {
            (Some(world), Some(instance), None) => Ok((world.clone(), instance.clone())),
            (None, None, Some(location)) => split_location(location),
            _ => Err("give world_id and instance_id, or location".into()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FriendsPayload {
    #[serde(default = "default_page")]
    n: u32,
    #[serde(default)]
    offset: u32,
}

fn default_page() -> u32 {
    MAX_FRIENDS_PAGE
}

struct VrchatTask {
    kind: Kind,
    client: Arc<VrchatClient>,
}

fn parse<T: for<'de> Deserialize<'de>>(payload: &Value) -> Result<T, String> {
    // An absent payload is an empty object for the types that take nothing.
    let payload = if payload.is_null() {
        &json!({})
    } else {
        payload
    };
    T::deserialize(payload).map_err(|e| e.to_string())
}

impl VrchatTask {
    fn check(&self, payload: &Value) -> Result<(), String> {
        let invalid = |e: VrchatError| e.to_string();
        match self.kind {
            Kind::CurrentUser => parse::<Empty>(payload).map(|_| ()),
            Kind::User => segment("user_id", &parse::<UserPayload>(payload)?.user_id)
                .map(|_| ())
                .map_err(invalid),
            Kind::World => segment("world_id", &parse::<WorldPayload>(payload)?.world_id)
                .map(|_| ())
                .map_err(invalid),
            Kind::Instance => {
                let (world, instance) = parse::<InstancePayload>(payload)?.ids()?;
                segment("world_id", &world).map_err(invalid)?;
                segment("instance_id", &instance).map_err(invalid)?;
                Ok(())
            }
            Kind::FriendsOnline => {
                let p = parse::<FriendsPayload>(payload)?;
                if p.n == 0 || p.n > MAX_FRIENDS_PAGE {
                    return Err(format!("n must be between 1 and {MAX_FRIENDS_PAGE}"));
                }
                Ok(())
            }
        }
    }

    async fn call(&self, payload: &Value) -> Result<Value, VrchatError> {
        let client = &self.client;
        match self.kind {
            Kind::CurrentUser => client.current_user().await,
            Kind::User => {
                let p: UserPayload = parse(payload).map_err(VrchatError::Invalid)?;
                client.user(&p.user_id).await
            }
            Kind::World => {
                let p: WorldPayload = parse(payload).map_err(VrchatError::Invalid)?;
                client.world(&p.world_id).await
            }
            Kind::Instance => {
                let p: InstancePayload = parse(payload).map_err(VrchatError::Invalid)?;
                let (world, instance) = p.ids().map_err(VrchatError::Invalid)?;
                client.instance(&world, &instance).await
            }
            Kind::FriendsOnline => {
                let p: FriendsPayload = parse(payload).map_err(VrchatError::Invalid)?;
                client.friends_online(p.n, p.offset).await
            }
        }
    }
}

#[async_trait]
impl Handler for VrchatTask {
    fn validate(&self, payload: &Value) -> Result<(), String> {
        self.check(payload)
    }

    async fn run(&self, ctx: TaskContext) -> Result<Value, HandlerError> {
        let result = tokio::select! {
            result = self.call(&ctx.task.payload) => result,
            _ = ctx.cancel.cancelled() => return Err(HandlerError::retryable("interrupted")),
        };
        result.map_err(|e| {
            let details = json!({"code": e.code()});
            let error = if e.retryable() {
                HandlerError::retryable(e.to_string())
            } else {
                HandlerError::permanent(e.to_string())
            };
            error.with_details(details)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_locations_into_world_and_instance() {
        assert_eq!(
            split_location("wrld_1:123~private(usr_2)").unwrap(),
            ("wrld_1".to_owned(), "123~private(usr_2)".to_owned())
        );
        assert!(split_location("wrld_1").is_err());
        assert!(split_location(":1").is_err());
    }

    #[test]
    fn payloads_are_checked_before_the_task_is_accepted() {
        let adapter = VrchatAdapter::new(VrchatConfig::new("user", "pass")).unwrap();
        let mut registry = HandlerRegistry::default();
        adapter.register(&mut registry);
        let check = |t: &str, p: Value| registry.get(t).unwrap().validate(&p);
        assert!(check(USER_CURRENT, Value::Null).is_ok());
        assert!(check(USER_CURRENT, json!({"x": 1})).is_err());
        assert!(check(USER_GET, json!({"user_id": "usr_1"})).is_ok());
        assert!(check(USER_GET, json!({"user_id": "../x"})).is_err());
        assert!(check(WORLD_GET, json!({})).is_err());
        assert!(check(INSTANCE_GET, json!({"location": "wrld_1:1"})).is_ok());
        assert!(check(INSTANCE_GET, json!({"world_id": "wrld_1"})).is_err());
        assert!(check(FRIENDS_ONLINE, json!({"n": 101})).is_err());
        assert!(check(FRIENDS_ONLINE, json!({})).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn locations_split_or_fail_without_panicking(location in "\\PC{0,100}") {
            if let Ok((world, instance)) = split_location(&location) {
                proptest::prop_assert_eq!(format!("{world}:{instance}"), location);
            }
        }

    }
}
