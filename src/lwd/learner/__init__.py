"""lwd.learner."""
