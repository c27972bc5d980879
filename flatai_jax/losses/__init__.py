"""Loss terms and the weighted training objective."""
