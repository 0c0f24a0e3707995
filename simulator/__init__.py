"""Fleet simulator: simulated app instances on the real gateway, against simulated providers."""
