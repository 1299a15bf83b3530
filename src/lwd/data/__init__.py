"""lwd.data."""
