"""L9 command line, settings and the embedded development stack."""
