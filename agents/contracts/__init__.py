"""The message contracts the agents share: payload models, the errors and graph
hooks that travel with them. Every agent may import this package; it imports no agent."""
