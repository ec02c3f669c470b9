//! A local interpreter for Amazon States Language: the same definition files Step Functions
//! runs on AWS, run in-process. What of the language it supports is listed in this crate's
//! README; anything else is refused when a definition is loaded ([`Definition::load`]), never
//! while it runs.

pub mod callback;
pub mod choice;
pub mod definition;
pub mod intrinsic;
pub mod path;
pub mod run;
pub mod script;
pub mod template;

pub use callback::{CallbackError, Callbacks, WithCallbacks};
pub use definition::{Definition, Refused};
pub use run::{Clock, Execution, Failure, RealTime, TaskCall, Tasks, VirtualTime, run};
pub use script::Script;
