//! Memory limits and load shedding (being written).
