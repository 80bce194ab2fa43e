"""The SymPy worker's shared contracts: request/result payloads, errors, expression graphs."""
