//! Fleet-wide rollouts. [`plan`] is the state machine, without I/O: given a
//! rollout's state, what the fleet looks like now and the time, it moves the
//! rollout forward and says which machines to start or revert. The
//! application layer (`app::rollouts`, `app::driver`) records what it decides.
pub mod plan;

#[cfg(test)]
mod tests;
