"""The console's pages: one module each, each with its ``routes``."""
