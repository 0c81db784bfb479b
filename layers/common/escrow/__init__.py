"""Group deposit escrow: the shared layer (configuration, MySQL access, Toss client, auth, money rules)."""
