"""The rules of money. Every entry point (HTTP, schedule, webhook, local runner) goes through these."""
