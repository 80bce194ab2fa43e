"""Clients any agent uses to call a tool worker over the bus."""
