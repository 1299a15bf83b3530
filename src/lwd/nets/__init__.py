"""lwd.nets."""
