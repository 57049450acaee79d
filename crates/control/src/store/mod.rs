//! The config store: resources read from config directories, with the last good version of
//! each file kept in force.
//!
//! [`ConfigIndex`] is the pure part (apply a file's parsed documents, remove a file, take a
//! snapshot), tested synchronously. [`DirStore`] is the adapter that polls directories and feeds
//! the index, publishing each new [`ConfigSnapshot`] on a watch channel.

mod index;
mod poll;
pub mod traffic;

pub use index::{ConfigIndex, ConfigSnapshot, ResourceStatus, Status};
pub use poll::{DirStore, MissingDir};
pub use traffic::{Attached, ServiceRoutes, Traffic};
