"""Training data: host-side example indices and on-device clean/degraded examples."""
