"""Who may do what: caller identity, rate limits, and the secrets the providers need."""
