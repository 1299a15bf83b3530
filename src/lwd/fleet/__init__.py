"""lwd.fleet."""
