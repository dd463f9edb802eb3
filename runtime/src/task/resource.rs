//! Shared resources: values registered once on the runtime (a database pool, an HTTP
//! client, a configuration) and handed to every task that asks for one by type.
//!
//! A resource is not an input: it is not stored, not serialized, not part of the graph's
//! fingerprint. It is kept by type in a small map (one entry per type), shared as an
//! `Arc`, the same value for every task of every run, child runs and resumed runs
//! included.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A value that can be shared between tasks as a resource: `Send + Sync + 'static`.
///
/// Implemented for every such type; you never implement it by hand.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be shared between tasks as a resource",
    label = "a resource is shared by tasks running on several threads at once",
    note = "a resource must be `Send + Sync + 'static`: wrap what is not `Sync` in a `Mutex`, and own borrowed data"
)]
pub trait Resource: Send + Sync + 'static {}

impl<T: Send + Sync + 'static> Resource for T {}

/// A shared resource a task reads: a parameter of a `#[task]` function, or
/// [`Ctx::resource`](crate::Ctx::resource).
///
/// Register the value on the runtime with
/// [`RuntimeBuilder::resource`](crate::RuntimeBuilder::resource); declare it in a task
/// as a parameter `name: Res<T>`. The parameter is not an argument of the task type's
/// `new` (the runtime supplies it), and a process whose tasks need a resource the
/// runtime does not have is refused before anything runs (see
/// [`Error::MissingResource`](crate::Error::MissingResource)).
///
/// `Res<T>` derefs to `T`; cloning it clones the `Arc` inside, not the value.
///
/// `#[task]` sees tokens, not types: it takes any parameter whose type is written
/// `Res<…>` (any path ending in `Res`) for a resource, so do not name an input type of
/// your own `Res`. A resource is always a parameter of its own: `&Res<T>`,
/// `Option<Res<T>>` or `Res<A, B>` are compile errors (for an optional resource, call
/// [`Ctx::resource`](crate::Ctx::resource)).
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// use std::collections::HashMap;
///
/// /// A stand-in for a database pool.
/// struct Prices(HashMap<String, u32>);
///
/// #[task]
/// fn price(prices: Res<Prices>, item: String) -> u32 {
///     prices.0.get(&item).copied().unwrap_or(0)
/// }
///
/// #[process]
/// fn quote(p: &mut Builder, item: String) {
///     p.task(Price::new(item)); // no argument for the resource
/// }
///
/// # #[tokio::main] async fn main() -> procession::Result<()> {
/// let prices = Prices(HashMap::from([("tea".to_owned(), 3)]));
/// let rt = Runtime::in_memory().resource(prices).start().await?;
/// let report = rt.run(Quote { item: "tea".into() }).await?;
/// assert_eq!(report.result::<u32>("price").unwrap(), 3);
///
/// // The function stays callable directly, with a resource made by hand:
/// assert_eq!(price(Res::new(Prices(HashMap::new())), "tea".into()), 0);
/// # Ok(()) }
/// ```
pub struct Res<T: ?Sized>(Arc<T>);

impl<T> Res<T> {
    /// A resource holding `value` (for calling a task function directly, in tests).
    pub fn new(value: T) -> Self {
        Res(Arc::new(value))
    }
}

impl<T: ?Sized> Res<T> {
    /// The shared pointer inside.
    pub fn arc(this: &Self) -> &Arc<T> {
        &this.0
    }

    /// The shared pointer inside, by value.
    pub fn into_arc(this: Self) -> Arc<T> {
        this.0
    }
}

impl<T: ?Sized> Deref for Res<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized> AsRef<T> for Res<T> {
    fn as_ref(&self) -> &T {
        &self.0
    }
}

impl<T: ?Sized> Clone for Res<T> {
    fn clone(&self) -> Self {
        Res(self.0.clone())
    }
}

impl<T: ?Sized> From<Arc<T>> for Res<T> {
    fn from(arc: Arc<T>) -> Self {
        Res(arc)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Res<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A resource type a task needs, as recorded in its [`TaskMeta`](crate::TaskMeta) by
/// `#[task]`: the runtime checks every task of a graph against the resources it holds
/// before the graph runs.
///
/// # Examples
///
/// ```
/// use procession::prelude::*;
/// use procession::ResourceKey;
///
/// struct Client;
///
/// #[task]
/// fn call(client: Res<Client>) -> u32 { let _ = client; 1 }
///
/// let needs = <Call as Task>::META.resources;
/// assert_eq!(needs.len(), 1);
/// assert_eq!(needs[0], ResourceKey::of::<Client>());
/// assert!(needs[0].type_name().ends_with("Client"));
/// ```
#[derive(Clone, Copy)]
pub struct ResourceKey {
    id: fn() -> TypeId,
    name: fn() -> &'static str,
}

impl ResourceKey {
    /// The key of resource type `T`.
    pub const fn of<T: ?Sized + 'static>() -> Self {
        ResourceKey {
            id: TypeId::of::<T>,
            name: std::any::type_name::<T>,
        }
    }

    /// The type's id.
    pub fn type_id(&self) -> TypeId {
        (self.id)()
    }

    /// The type's name, for messages.
    pub fn type_name(&self) -> &'static str {
        (self.name)()
    }
}

impl PartialEq for ResourceKey {
    fn eq(&self, other: &Self) -> bool {
        self.type_id() == other.type_id()
    }
}

impl Eq for ResourceKey {}

impl fmt::Debug for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

/// The resources of a runtime, by type.
#[derive(Default, Clone)]
pub(crate) struct Resources {
    map: HashMap<TypeId, (&'static str, Arc<dyn Any + Send + Sync>)>,
}

impl fmt::Debug for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.map.values().map(|(name, _)| name))
            .finish()
    }
}

impl Resources {
    /// Adds (or replaces) the resource of type `T`.
    pub(crate) fn insert<T: Resource>(&mut self, value: Arc<T>) {
        self.map
            .insert(TypeId::of::<T>(), (std::any::type_name::<T>(), value));
    }

    /// The resource of type `T`.
    pub(crate) fn get<T: Resource>(&self) -> Option<Res<T>> {
        let (_, any) = self.map.get(&TypeId::of::<T>())?;
        any.clone().downcast::<T>().ok().map(Res)
    }

    /// Whether a resource of the key's type is held.
    pub(crate) fn contains(&self, key: &ResourceKey) -> bool {
        self.map.contains_key(&key.type_id())
    }

    /// Names of the types held, sorted.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.map.values().map(|(n, _)| *n).collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_by_type_and_shared() {
        let mut r = Resources::default();
        r.insert(Arc::new(7_u32));
        r.insert(Arc::new(String::from("db")));
        assert_eq!(*r.get::<u32>().unwrap(), 7);
        assert_eq!(&*r.get::<String>().unwrap(), "db");
        assert!(r.get::<u64>().is_none());
        assert!(r.contains(&ResourceKey::of::<u32>()));
        assert!(!r.contains(&ResourceKey::of::<i32>()));
        // Replaced, not added.
        r.insert(Arc::new(8_u32));
        assert_eq!(*r.get::<u32>().unwrap(), 8);
        assert_eq!(r.names(), vec!["alloc::string::String", "u32"]);
        // Shared: the same allocation every time.
        let (a, b) = (r.get::<String>().unwrap(), r.get::<String>().unwrap());
        assert!(Arc::ptr_eq(Res::arc(&a), Res::arc(&b)));
    }
}
