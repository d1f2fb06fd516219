//! The Promotion activities' logic, called directly (no Temporal) against a real control DB
//! on SQLite and PostgreSQL: the policy gates and their refusals (`policy`), the RouteOwner
//! compare-and-swap with its audit row and the wait for edge acknowledgements (`route`),
//! and allocations started, reused, watched and drained on a real runner (`allocations`).

#[path = "promotion_activities/allocations.rs"]
mod allocations;
#[path = "promotion_activities/policy.rs"]
mod policy;
#[path = "promotion_activities/route.rs"]
mod route;
#[path = "promotion_activities/support.rs"]
mod support;
