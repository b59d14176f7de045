//! `hil-agent`: the on-board inference agent.
