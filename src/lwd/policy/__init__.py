"""lwd.policy."""
