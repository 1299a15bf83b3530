"""lwd.algo."""
