"""lwd.sim."""
